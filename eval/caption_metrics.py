"""BLEU-1..4 and CIDEr-D of candidate captions against reference captions, as coco-caption scores them.

Every function takes (candidates, references) in that order: candidates[i] is one string (the
caption of generated frame i), references[i] a list of strings (what it should match). StoryGPT-V's
script passed them to coco-caption swapped for BLEU (docs/storygpt_v.md); here the order is in the names.

BLEU (Papineni et al. 2002), corpus level as coco-caption's Bleu: clipped n-gram counts summed over
the corpus, brevity penalty against the closest reference length, with coco-caption's tiny
smoothing constants. CIDEr-D (Vedantam et al. 2015), as coco-caption's "CIDEr": tf-idf n-gram vectors
(n = 1..4, document frequency over the references), clipped candidate counts, a Gaussian length
penalty (sigma 6), averaged over references and n, times 10.
Tokenisation: lower case, words and numbers only (punctuation dropped, as the PTB tokenizer does).
"""
import math
import re
from collections import Counter

TINY, SMALL = 1e-15, 1e-9  # coco-caption's smoothing of BLEU's log precisions
CIDER_SIGMA = 6.0


def tokenize(text):
    return re.findall(r"[a-z0-9]+(?:'[a-z]+)?", text.lower())


def _ngrams(words, n):
    return Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))


def _check(candidates, references):
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates but {len(references)} reference lists")
    for index, refs in enumerate(references):
        if isinstance(refs, str) or not refs:
            raise ValueError(f"references[{index}] must be a non-empty list of strings")


def bleu(candidates, references, max_n=4):
    """{"bleu1": ..., "bleu4": ...}: corpus BLEU-n of candidates against their reference lists."""
    _check(candidates, references)
    correct, total = [0] * max_n, [0] * max_n
    candidate_length = reference_length = 0
    for candidate, refs in zip(candidates, references):
        words = tokenize(candidate)
        ref_words = [tokenize(ref) for ref in refs]
        candidate_length += len(words)
        # closest reference length, the shorter one on a tie (coco-caption's "closest")
        reference_length += min((abs(len(ref) - len(words)), len(ref)) for ref in ref_words)[1]
        for n in range(1, max_n + 1):
            counts = _ngrams(words, n)
            max_ref = Counter()
            for ref in ref_words:
                max_ref |= _ngrams(ref, n)
            correct[n - 1] += sum(min(count, max_ref[gram]) for gram, count in counts.items())
            total[n - 1] += max(len(words) - n + 1, 0)
    ratio = (candidate_length + TINY) / (reference_length + SMALL)
    brevity = 1.0 if ratio >= 1 else math.exp(1 - 1 / ratio)
    scores, log_sum = {}, 0.0
    for n in range(1, max_n + 1):
        log_sum += math.log((correct[n - 1] + TINY) / (total[n - 1] + SMALL))
        scores[f"bleu{n}"] = brevity * math.exp(log_sum / n)
    return scores


def _cider_vector(counts, document_frequency, log_num_docs):
    """(per-n {ngram: tf-idf}, per-n norms, length in words) of one caption's n-gram counts."""
    vectors = [dict() for _ in range(4)]
    norms = [0.0] * 4
    for gram, term_frequency in counts.items():
        n = len(gram) - 1
        value = term_frequency * (log_num_docs - math.log(max(1.0, document_frequency[gram])))
        vectors[n][gram] = value
        norms[n] += value ** 2
    return vectors, [math.sqrt(norm) for norm in norms]


def _all_ngrams(words):
    counts = Counter()
    for n in range(1, 5):
        counts.update(_ngrams(words, n))
    return counts


def cider_per_caption(candidates, references):
    """CIDEr-D of each candidate (list of floats); document frequencies come from all references."""
    _check(candidates, references)
    reference_counts = [[_all_ngrams(tokenize(ref)) for ref in refs] for refs in references]
    document_frequency = Counter()
    for counts_of_refs in reference_counts:
        document_frequency.update(set(gram for counts in counts_of_refs for gram in counts))
    log_num_docs = math.log(float(len(references)))
    scores = []
    for candidate, counts_of_refs, refs in zip(candidates, reference_counts, references):
        candidate_words = tokenize(candidate)
        vec, norm = _cider_vector(_all_ngrams(candidate_words), document_frequency, log_num_docs)
        total = [0.0] * 4
        for ref_counts, ref in zip(counts_of_refs, refs):
            ref_vec, ref_norm = _cider_vector(ref_counts, document_frequency, log_num_docs)
            delta = len(candidate_words) - len(tokenize(ref))
            for n in range(4):
                value = sum(min(weight, ref_vec[n].get(gram, 0.0)) * ref_vec[n].get(gram, 0.0)
                            for gram, weight in vec[n].items())
                if norm[n] and ref_norm[n]:
                    value /= norm[n] * ref_norm[n]
                total[n] += value * math.exp(-(delta ** 2) / (2 * CIDER_SIGMA ** 2))
        scores.append(10.0 * (sum(total) / 4) / len(refs))
    return scores


def cider(candidates, references):
    """Corpus CIDEr-D: the mean of cider_per_caption."""
    per_caption = cider_per_caption(candidates, references)
    return sum(per_caption) / len(per_caption)
