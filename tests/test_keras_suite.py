"""Keras's own tests of `keras.distillation`, run against keras-distill.

The test files ship inside the installed `keras` wheel
(`keras/src/distillation/distiller_test.py` and `distillation_loss_test.py`).
They are read from there, not copied, and changed in two ways only:

- their imports of `Distiller`, `LogitsDistillation` and
  `FeatureDistillation` come from `keras_distill`;
- the assertions on the two documented differences (docs/migrating.md) are
  changed, each counted, so that a new Keras release that changes them
  fails here instead of passing silently:
  - keras-distill leaves the teacher's `trainable` flag as the user set it
    (it excludes the teacher's variables from training instead), so
    `assertFalse(teacher.trainable)` becomes `assertTrue(...)`: these
    teachers were built trainable;
  - keras-distill reads inner layers from the one forward pass of each
    model, so there are no `_teacher_feature_extractor` /
    `_student_feature_extractor` models; those assertions are removed.

Every other line runs as Keras wrote it, on each backend.
"""

import ast
import pathlib

import keras

SUITE = pathlib.Path(keras.__file__).parent / "src" / "distillation"
MODULES = {
    "keras.src.distillation.distiller": "keras_distill",
    "keras.src.distillation.distillation_loss": "keras_distill",
}
# (file, test) -> how many assertions each difference changes in it.
CHANGED = {
    ("distillation_loss_test.py", "test_feature_distillation_end_to_end"): {"extractor": 4},
    ("distillation_loss_test.py", "test_multi_distillation_loss_distillation_end_to_end"): {
        "extractor": 4
    },
    ("distiller_test.py", "test_distiller_initialization"): {"trainable": 1},
    ("distiller_test.py", "test_teacher_freezing"): {"trainable": 2},
}


def _difference(statement):
    """Which documented difference an assertion statement tests, if any."""
    if not (
        isinstance(statement, ast.Expr)
        and isinstance(statement.value, ast.Call)
        and isinstance(statement.value.func, ast.Attribute)
        and statement.value.func.attr.startswith("assert")
    ):
        return None
    text = ast.unparse(statement)
    if "_feature_extractor" in text:
        return "extractor"
    call = statement.value
    if (
        call.func.attr == "assertFalse"
        and isinstance(call.args[0], ast.Attribute)
        and call.args[0].attr == "trainable"
        and "teacher" in ast.unparse(call.args[0].value)
    ):
        return "trainable"
    return None


class _Port(ast.NodeTransformer):
    def __init__(self, filename):
        self.filename = filename
        self.imports = 0
        self.changed = {}

    def visit_ImportFrom(self, node):
        if node.module in MODULES:
            node.module = MODULES[node.module]
            self.imports += 1
        return node

    def visit_FunctionDef(self, node):
        counts = {}
        body = []
        for statement in node.body:
            kind = _difference(statement)
            if kind == "trainable":
                statement.value.func.attr = "assertTrue"
            if kind is not None:
                counts[kind] = counts.get(kind, 0) + 1
            if kind != "extractor":
                body.append(statement)
        node.body = body or [ast.Pass()]
        if counts:
            self.changed[(self.filename, node.name)] = counts
        return node


def _load(filename):
    path = SUITE / filename
    tree = ast.parse(path.read_text(), filename=str(path))
    port = _Port(filename)
    tree = ast.fix_missing_locations(port.visit(tree))
    namespace = {"__name__": f"{__name__}.{path.stem}", "__file__": str(path)}
    exec(compile(tree, str(path), "exec"), namespace)
    return port, namespace


def _collect():
    """Loads both files; puts their test classes in this module for pytest."""
    ports = []
    for filename in ("distiller_test.py", "distillation_loss_test.py"):
        port, namespace = _load(filename)
        ports.append(port)
        for name, value in namespace.items():
            if name.startswith("Test") and getattr(value, "__module__", None) == namespace["__name__"]:
                assert name not in globals(), name
                globals()[name] = value
    return ports


_PORTS = _collect()


def test_only_the_imports_and_the_documented_assertions_changed():
    assert [port.imports for port in _PORTS] == [2, 3]
    changed = {key: n for port in _PORTS for key, n in port.changed.items()}
    assert changed == CHANGED
