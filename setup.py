"""cliplite_jax: CLIP-Lite image–text pretraining in JAX/Flax."""
from setuptools import find_packages, setup

setup(
    name="cliplite_jax",
    version="0.1.0",
    description=("CLIP-Lite (Jensen-Shannon MI bound, one negative per pair) "
                 "image-text pretraining in JAX/Flax"),
    python_requires=">=3.10",
    packages=find_packages(include=["cliplite_jax", "cliplite_jax.*"]),
    # CLIP's ImageNet class names and prompt templates (zero-shot), and the
    # in-context examples of LaCLIP rewriting.
    package_data={"cliplite_jax.data": ["zeroshot/*.txt", "rewrite/*.json",
                                        "benchmark/*.json"]},
    install_requires=[
        "jax>=0.10",
        "flax>=0.12",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12",
        "etils[epath]",  # workdir files, local or gs://
        "grain>=0.2.18",
        "tensorflow-datasets>=4.9.10",
        # TFDS needs TensorFlow to build datasets with image features.
        "tensorflow-cpu",
        "tensorboard",
        "importlib_resources",  # used by TFDS, not declared by it
        "ml_collections>=1.1",
        "tokenizers",
        "absl-py",
        "numpy",
        "pillow",
        "simplejpeg",  # libjpeg-turbo decoding, with DCT-domain downscaling
        "safetensors",
        "matplotlib",
    ],
    extras_require={
        # python -m cliplite_jax.rewrite with a local language model.
        "rewrite": ["transformers>=5", "torch"],
        # python -m cliplite_jax.prepare --runner=direct|dataflow|flink|spark.
        "beam": ["apache-beam>=2.60"],
        # data.resize="opencv": the faster antialiased resize.
        "opencv": ["opencv-python-headless"],
        # scikit-image and scikit-learn: their bundled sample photographs
        # are the real-photo test set of prepared datasets.
        # pytest-xdist: the suite runs in 2 processes, a test file each.
        # open-clip-torch: the reference for importing open_clip checkpoints.
        # apache-beam: prepare on Beam's DirectRunner, checked against the
        # local pool; opencv: its resize, checked against PIL's.
        "test": ["pytest", "pytest-xdist", "scikit-learn", "scikit-image", "transformers>=5",
                 "torch==2.14.1", "torchvision==0.29.1",
                 "open-clip-torch==3.3.0", "apache-beam>=2.60",
                 "opencv-python-headless"],
    },
)
