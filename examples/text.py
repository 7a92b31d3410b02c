"""Word-level text helpers shared by the fine-food review tutorials."""

import collections
import re

PAD, UNKNOWN = 0, 1


def words(text):
    """Lower-case words, `!` and `?` of a review, HTML line breaks removed."""
    return re.findall(r"[a-z0-9']+|[!?]", text.lower().replace("<br />", " "))


def vocabulary(texts, size, first_id=2):
    """The `size - first_id` most frequent words, numbered from `first_id`.

    The ids below `first_id` are reserved: PAD, UNKNOWN and any others the
    model needs (e.g. BERT's `[CLS]`).
    """
    counts = collections.Counter(w for text in texts for w in words(text))
    return {
        w: first_id + i
        for i, (w, _) in enumerate(counts.most_common(size - first_id))
    }


def word_ids(text, vocab):
    """The ids of a text's words; UNKNOWN for those outside `vocab`."""
    return [vocab.get(w, UNKNOWN) for w in words(text)]
