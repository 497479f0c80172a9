"""Classification metrics of the Astromer few-shot protocol, as a Hugging Face ``evaluate`` module.

Loaded by path, so it works offline and needs no Hub access::

    import evaluate
    metric = evaluate.load("train/metrics/light_curve_classification")    # or astromer_train.metrics.load_metric()
    metric.compute(predictions=[0, 1, 1], references=[0, 1, 0], label_names=["RRab", "RRc"])

``compute`` returns ``f1_macro`` (scikit-learn's ``f1_score(average="macro")`` over every class in
``label_names``, so a class never predicted counts with F1 = 0: the papers' metric), ``accuracy``, ``n`` (the number
of predictions) and ``report`` (scikit-learn's per-class ``classification_report`` as a dict). The same call scores
windows or light curves: the caller decides what one prediction is.
"""

import datasets
import evaluate
from sklearn.metrics import accuracy_score, classification_report, f1_score

_DESCRIPTION = """Macro-F1 (the Astromer papers' metric), accuracy and the per-class report of a classifier."""
_INPUTS = """
Args:
    predictions (`list` of `int`): predicted class indices.
    references (`list` of `int`): true class indices.
    label_names (`list` of `str`, optional): the class names, index order; default the labels seen, as text.
Returns:
    f1_macro (`float`), accuracy (`float`), n (`int`), report (`dict`).
"""
_CITATION = """@article{donoso2025astromer2, title={Astromer 2}, journal={arXiv:2502.02717}, year={2025}}"""


class LightCurveClassification(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_INPUTS,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, label_names=None):
        if label_names is None:
            label_names = [str(v) for v in sorted(set(references) | set(predictions))]
            labels = sorted(set(references) | set(predictions))
        else:
            labels = list(range(len(label_names)))
        return {
            "f1_macro": float(f1_score(references, predictions, average="macro", labels=labels, zero_division=0)),
            "accuracy": float(accuracy_score(references, predictions)),
            "n": len(references),
            "report": classification_report(references, predictions, labels=labels, target_names=list(label_names),
                                            output_dict=True, zero_division=0),
        }
