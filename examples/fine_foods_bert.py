"""DistilBERT and TinyBERT losses: a half-depth keras-hub BERT, fine-food reviews.

Tutorial. The teacher is a small keras-hub `BertTextClassifier` (4
transformer layers, width 128), trained from scratch on 4,000 Amazon
fine-food reviews to tell "great" reviews from the others. The student
keeps the width and halves the depth. As in DistilBERT, every student starts
from the teacher: its embeddings and its two transformer layers are copies
of the teacher's embeddings and of teacher layers 2 and 4. From there it is
trained three ways, with the same seed, optimizer and epochs:

1. on the labels alone (the baseline);
2. with DistilBERT's triple loss (Sanh et al. 2019): the labels, `KD` on
   the teacher's softened logits, and `HiddenCosine` aligning the
   direction of the student's last hidden states with the teacher's;
3. with TinyBERT's layer-wise loss (Jiao et al. 2020), labels and `KD`
   plus `TransformerAttention`: student layer i matches the attention
   probabilities (per head) and, through a learned projection, the hidden
   states of teacher layer 2i.

The losses tap keras-hub's transformer layers by path
(`"backbone/transformer_layer_1"`) in the models' single forward pass; the
padding mask of every batch (`input_mask="padding_mask"`) keeps padded
positions out of them. Reviews are split into lower-case words; the 5,000
most frequent form the vocabulary (a pretrained WordPiece vocabulary would
need a download).

Measured on seed 0 alone (`--seeds 0`) with the other defaults (6 epochs
each, 128 words; JAX, 2 CPU cores; about 14 minutes), accuracy on the
1,000 test reviews: teacher 0.788; student on labels 0.775, with
DistilBERT's losses 0.786, with TinyBERT's 0.790. The student trains in
half the teacher's time (its parameters are dominated by the shared-size
word embedding). One seed and 1,000 reviews give a standard error of about
1.3 points per accuracy, so the distilled students' 1.1 and 1.5 points
over the labels-only student are suggestive, not established; the default
three seeds (`--seeds 0 1 2`) measure more.

Run: `KERAS_BACKEND=jax python examples/fine_foods_bert.py` (`--quick` for a
smoke run on seed 0; seeds 0, 1 and 2 by default, `--seeds` for others;
`--report DIR` for `keras_distill.report`'s table and plots). The data is
fetched as `examples/datasets.py` describes.
"""

import argparse
import os
import sys
import time

import keras
import keras_hub
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras_distill  # noqa: E402
from datasets import load_fine_foods  # noqa: E402
from keras_distill.losses import KD  # noqa: E402
from keras_distill.losses import HiddenCosine  # noqa: E402
from keras_distill.losses import TransformerAttention  # noqa: E402
import text  # noqa: E402
from results import add_seeds_argument  # noqa: E402
from results import chosen_seeds  # noqa: E402
from results import print_table  # noqa: E402
from results import report_rows  # noqa: E402
from text import PAD  # noqa: E402

SCCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
CLS = 2  # after text.PAD and text.UNKNOWN
TEACHER_DEPTH, STUDENT_DEPTH = 4, 2


def vocabulary(texts, size):
    """The `size - 3` most frequent words, numbered after PAD, UNKNOWN, CLS."""
    return text.vocabulary(texts, size, first_id=CLS + 1)


def encode(texts, vocab, length):
    """keras-hub BERT inputs: `[CLS]` and the first words, padded."""
    ids = np.full((len(texts), length), PAD, "int32")
    for row, review in enumerate(texts):
        tokens = [CLS] + text.word_ids(review, vocab)[: length - 1]
        ids[row, : len(tokens)] = tokens
    return {
        "token_ids": ids,
        "segment_ids": np.zeros_like(ids),
        "padding_mask": ids != PAD,
    }


def bert(num_layers, vocabulary_size, length, name):
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=vocabulary_size, num_layers=num_layers, num_heads=4,
        hidden_dim=128, intermediate_dim=256, max_sequence_length=length,
        dropout=0.1, name="backbone",
    )
    return keras_hub.models.BertTextClassifier(
        backbone, num_classes=2, preprocessor=None, name=name
    )


def layer_path(index):
    return f"backbone/transformer_layer_{index}"


def initialise_from_teacher(student, teacher):
    """DistilBERT's initialisation: the teacher's embeddings, and teacher
    layer `k * (i + 1) - 1` for student layer `i` (`k` = depth ratio)."""
    for layer in student.backbone.layers:
        if not layer.weights or layer.name.startswith("transformer_layer_"):
            continue
        layer.set_weights(teacher.backbone.get_layer(layer.name).get_weights())
    k = TEACHER_DEPTH // STUDENT_DEPTH
    for i in range(STUDENT_DEPTH):
        source = teacher.get_layer("backbone").get_layer(
            f"transformer_layer_{k * (i + 1) - 1}"
        )
        student.backbone.get_layer(f"transformer_layer_{i}").set_weights(
            source.get_weights()
        )


def distilbert_losses():
    last_t, last_s = layer_path(TEACHER_DEPTH - 1), layer_path(STUDENT_DEPTH - 1)
    return [
        KD(temperature=2.0),
        HiddenCosine(last_t, last_s, input_mask="padding_mask"),
    ]


def tinybert_losses():
    return [
        KD(temperature=2.0),
        TransformerAttention(
            [layer_path(i) for i in range(TEACHER_DEPTH)],
            [layer_path(i) for i in range(STUDENT_DEPTH)],
            input_mask="padding_mask",
        ),
    ]


def run(epochs=6, teacher_epochs=6, length=128, vocabulary_size=5000,
        train_size=None, seed=0, verbose=0, test_size=None, report_path=None):
    """Trains the teacher and the three students; returns their results.

    Args:
        epochs: epochs of each student. Defaults to 6.
        teacher_epochs: epochs of the teacher. Defaults to 6.
        length: tokens per review (the first words). Defaults to 128.
        vocabulary_size: words in the vocabulary. Defaults to 5,000.
        train_size: use the first `train_size` training reviews. Defaults
            to `None`: all 4,000.
        seed: the random seed of every model. Defaults to 0.
        verbose: Keras verbosity. Defaults to 0.
        test_size: test on the first `test_size` reviews. Defaults to
            `None`: all 1,000.
        report_path: a folder for `keras_distill.report`'s table and plots.
            Defaults to `None`.

    Returns:
        A list of dicts, one per model: `keras_distill.report`'s `model`,
        `accuracy` (test), `params` and `latency_ms`, plus training
        `seconds`.
    """
    (texts, y_train), (test_texts, y_test) = load_fine_foods()
    texts, y_train = texts[:train_size], y_train[:train_size]
    test_texts, y_test = test_texts[:test_size], y_test[:test_size]
    vocab = vocabulary(texts, vocabulary_size)
    x_train, x_test = encode(texts, vocab, length), encode(test_texts, vocab, length)
    batch_size = 32
    steps = -(-len(y_train) // batch_size)

    def adam(num_epochs):
        return keras.optimizers.AdamW(
            keras.optimizers.schedules.CosineDecay(5e-4, num_epochs * steps)
        )

    models, histories, seconds = {}, {}, {}

    def train(name, model, trained, num_epochs):
        start = time.perf_counter()
        model.compile(adam(num_epochs), SCCE)
        # keras-hub tasks batch NumPy inputs into an unshuffled dataset in
        # their own `fit`; Keras's `fit` shuffles them every epoch.
        histories[name] = keras.Model.fit(
            model, x_train, y_train, epochs=num_epochs, batch_size=batch_size,
            verbose=verbose,
        )
        models[name] = trained
        seconds[name] = time.perf_counter() - start

    def student():
        keras.utils.set_random_seed(seed)
        model = bert(STUDENT_DEPTH, vocabulary_size, length, "student")
        initialise_from_teacher(model, teacher)
        return model

    def distilled(losses):
        distiller = keras_distill.Distiller(teacher, student(), losses)
        return distiller, distiller.student

    keras.utils.set_random_seed(seed)
    teacher = bert(TEACHER_DEPTH, vocabulary_size, length, "teacher")
    train("teacher (4 layers)", teacher, teacher, teacher_epochs)
    scratch = student()
    train("student, labels only", scratch, scratch, epochs)
    train("student + DistilBERT losses", *distilled(distilbert_losses()), epochs)
    train("student + TinyBERT losses", *distilled(tinybert_losses()), epochs)
    return report_rows(models, x_test, y_test, seconds, histories, report_path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--teacher-epochs", type=int, default=6)
    add_seeds_argument(parser)
    parser.add_argument("--quick", action="store_true",
                        help="1 epoch on 128 reviews of 32 words, tested on 250, "
                        "seed 0 unless --seeds: a smoke run.")
    parser.add_argument("--report", metavar="DIR",
                        help="write keras_distill.report's table and plots "
                        "of each seed to DIR/seed_<seed>")
    args = parser.parse_args()
    runs = [
        run(
            epochs=1 if args.quick else args.epochs,
            teacher_epochs=1 if args.quick else args.teacher_epochs,
            length=32 if args.quick else 128,
            train_size=128 if args.quick else None,
            test_size=250 if args.quick else None,
            seed=seed,
            report_path=args.report and os.path.join(args.report, f"seed_{seed}"),
        )
        for seed in chosen_seeds(args)
    ]
    print_table("Fine-food reviews, test accuracy", runs)


if __name__ == "__main__":
    main()
