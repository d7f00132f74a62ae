"""prepare's units converted by an Apache Beam pipeline (`--runner`), for
sets too large for one machine: DirectRunner locally, Dataflow, Flink or
Spark on a cluster.

The pipeline is the same work as the local pool's: one `prepare_units.convert`
per pending unit, each writing its own shards under --out and then its
marker. A unit's shards are a function of the unit alone, so the shards,
their bytes and the card are those the local path writes; a unit Beam runs
twice (a retried bundle, a worker left running by a killed pipeline) writes
the same bytes to the same names. The driver plans the units and writes the
card, as locally; a rerun after a failure or preemption converts only the
units without a marker.

The workers import `cliplite_jax`: on a cluster, ship it with the runner's
options (e.g. Dataflow's `--setup_file=./setup.py`), and give them read
access to the sources and write access to --out.
"""
from __future__ import annotations

import json
import logging
import shlex
import threading

from etils import epath

from cliplite_jax.data import prepare_units
from cliplite_jax.data.prepare_options import PrepareError

# --runner values and Beam's runner names ("local" is prepare's own pool).
RUNNERS = {"direct": "DirectRunner", "dataflow": "DataflowRunner",
           "flink": "FlinkRunner", "spark": "SparkRunner"}


def is_local(runner: str) -> bool:
  """Whether the units run on this machine (the pool, or DirectRunner)."""
  return runner in ("local", "direct")


def check_units(runner: str, out: str, kinds: list[str]) -> None:
  """PrepareError when a remote runner's workers could not read the units:
  a captions file's rows ("rows" units) are partitioned on this machine,
  beside a local --out, or in a local temporary directory for a remote
  one."""
  if not is_local(runner) and "://" in out and "rows" in kinds:
    raise PrepareError(
        f"--runner={runner} with a captions file and a remote --out: its "
        f"rows are partitioned on this machine, out of the workers' reach; "
        f"use an --out on a filesystem the workers share, or webdataset "
        f"shards (as img2dataset writes) as the source")


def pipeline_options(runner: str, beam_options: str, num_workers: int):
  """Beam's PipelineOptions: the runner, `beam_options` passed through
  (shell words), and for DirectRunner `num_workers` processes unless the
  options set their own."""
  from apache_beam.options.pipeline_options import PipelineOptions
  try:
    args = shlex.split(beam_options)
  except ValueError as e:
    raise PrepareError(f"--beam_options: {e}") from e
  if any(a == "--runner" or a.startswith("--runner=") for a in args):
    raise PrepareError("--beam_options names a runner: give it as prepare's "
                       "--runner=direct|dataflow|flink|spark")
  args = [f"--runner={RUNNERS[runner]}"] + args
  if runner == "direct":
    if not any(a.startswith("--direct_num_workers") for a in args):
      args.append(f"--direct_num_workers={max(1, num_workers)}")
    if not any(a.startswith("--direct_running_mode") for a in args):
      args.append("--direct_running_mode=multi_processing")
  if not any(a.startswith("--default_sdk_harness_log_level") for a in args):
    # The workers' INFO lines would bury the progress line.
    args.append("--default_sdk_harness_log_level=WARNING")
  return PipelineOptions(args)


def require(runner: str, beam_options: str) -> None:
  """PrepareError, before any work, when `runner` needs Apache Beam and it
  is not installed, or `beam_options` do not parse."""
  if runner == "local":
    return
  _import_beam(runner)
  pipeline_options(runner, beam_options, 1)


def _import_beam(runner: str):
  """apache_beam, or PrepareError naming the extra to install."""
  # Beam's import warns of clients it does not use here (BigQuery's).
  logging.disable(logging.WARNING)
  try:
    import apache_beam
  except ImportError as e:
    raise PrepareError(f"--runner={runner} needs Apache Beam: pip install "
                       f"-e '.[beam]' in the clone ({e})") from e
  finally:
    logging.disable(logging.NOTSET)
  return apache_beam


def convert_all(jobs: list[tuple], runner: str, beam_options: str,
                num_workers: int, meter, examples: list[int]) -> None:
  """Runs `prepare_units.convert(*job)` for every job on the Beam `runner`,
  returning when the pipeline has finished; `meter` (progress.Progress)
  advances as the units' markers appear, and `examples[0]` counts the
  examples those units read (kept or skipped)."""
  beam = _import_beam(runner)
  # Its runner logs warnings about what it does not use here (worker state
  # directories, options meant for other runners).
  logging.getLogger("apache_beam").setLevel(logging.ERROR)
  options = pipeline_options(runner, beam_options, num_workers)
  watching = threading.Event()
  watcher = threading.Thread(target=_watch_markers,
                             args=(jobs, meter, examples, watching),
                             daemon=True)
  watcher.start()
  try:
    with beam.Pipeline(options=options) as pipeline:
      _ = (pipeline
           | "Units" >> beam.Create(jobs)
           # One unit per element, spread over the workers.
           | "Spread" >> beam.Reshuffle()
           | "Convert" >> beam.Map(prepare_units.convert_job))
  finally:
    watching.set()
    watcher.join()


def _watch_markers(jobs, meter, examples: list[int], stop: threading.Event,
                   every_s: float = 1.0) -> None:
  """Advances `meter` by each unit whose marker has appeared, and
  `examples[0]` by the examples that unit read: one listing of the work
  folder per sweep (on gs://, one request, not one per unit). A sweep
  that fails (a transient storage error) is tried again at the next."""
  pending = {epath.Path(job[3]).name: epath.Path(job[3]) for job in jobs}
  folder = next(iter(pending.values())).parent if pending else None
  while pending:
    finished = stop.wait(every_s)
    try:
      present = {p.name for p in folder.glob("unit-*.json")}
      for name in sorted(present & set(pending)):
        counts = json.loads(pending.pop(name).read_text())
        examples[0] += (sum(s["examples"] for s in counts["splits"].values())
                        + sum(counts["skipped"].values()))
        meter.add(1)
    except (OSError, ValueError, KeyError):
      pass
    if finished:
      return
