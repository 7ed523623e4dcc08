"""The paper's Table 9 claims (Sec. 6.2) held against a report's paired tests: which ones its data support.

Sec. 6.2 reads Table 9 as four claims about adversarially trained models: LR-Net-26 is more robust than ResNet-26
against targeted (+6.3) and untargeted (+12.4) attacks, and more robust than ResNet-50 (+0.8 and +4.3), which has
about twice its FLOPs. A claim is *supported* when the report's combined paired test of the two rows in that column
is significant in the paper's direction, *contradicted* when it is significant in the other, *not resolved* when it
is not significant, and *not measured* when the report lacks one of the rows or the test
(``lrrobust.report.table9.comparisons``). Significance is at 5% after Holm's adjustment over every paired test of
the report (``lrrobust.evaluation.stats.adjust_family``), the claims among them.

One training seed tests image sampling only: whether the difference would survive another training run is not
measured, so a significant difference on one seed makes a claim *indicative* (in or against the paper's direction),
never supported or contradicted.

Claims only from fair comparisons (issue 20, point 2): a comparison measures the architectures only when both
networks finished learning under their recipe, so a claim whose either side has a run of the claim's training kind
flagged by the training-convergence check (``lrrobust.training.convergence``) is *not resolved: <network> not
trained to convergence*, whatever its test says (the test's own verdict is kept in the detail). And the paper's
premise is that the networks compared are each well trained: LR-Net-26 beats ResNet-26 on clean accuracy under
regular training (Table 1; Table 9: 75.7 vs 72.8, and ResNet-50 76.3 beats LR-Net-26). When the report's
regular-training clean accuracies are ordered the other way, the verdict says so beside it.
"""

from __future__ import annotations

import dataclasses

from lrrobust.report.table9 import Comparison, Row, paper_table9


@dataclasses.dataclass(frozen=True)
class Claim:
    column: str  # a Table 9 column key
    lrnet: str  # zoo model names
    resnet: str
    paper_difference: float  # points, ImageNet
    text: str


PAPER_CLAIMS = (
    Claim("adv_targeted", "lrnet26", "resnet26", 6.3, "LR-Net-26 beats ResNet-26 against targeted attacks"),
    Claim("adv_untargeted", "lrnet26", "resnet26", 12.4, "LR-Net-26 beats ResNet-26 against untargeted attacks"),
    Claim("adv_targeted", "lrnet26", "resnet50", 0.8, "LR-Net-26 beats ResNet-50 against targeted attacks"),
    Claim("adv_untargeted", "lrnet26", "resnet50", 4.3, "LR-Net-26 beats ResNet-50 against untargeted attacks"),
)
VERDICTS = ("supported", "contradicted", "indicative", "not resolved", "not measured")


@dataclasses.dataclass(frozen=True)
class Assessment:
    claim: Claim
    verdict: str  # one of VERDICTS
    detail: str
    reason: str | None = None  # why a tested claim is not resolved anyway ("LR-Net-26 not trained to convergence")
    caveat: str | None = None  # said beside the verdict (clean accuracies ordered opposite to the paper's)

    @property
    def verdict_text(self) -> str:
        """'not resolved: LR-Net-26 not trained to convergence', with the caveat after it."""
        text = self.verdict + (f": {self.reason}" if self.reason else "")
        return text + (f" ({self.caveat})" if self.caveat else "")


def unconverged_reason(rows: list[Row], training: str) -> str | None:
    """'LR-Net-26 not trained to convergence (seeds 0, 2)' for each row with a flagged run of ``training``."""
    parts = []
    for row in rows:
        seeds = row.unconverged.get(training, ())
        if seeds:
            which = ", ".join(str(s) for s in seeds)
            parts.append(f"{row.network} not trained to convergence (seed{'s' if len(seeds) > 1 else ''} {which})")
    return ", and ".join(parts) or None


def clean_order_caveat(lrnet: Row, resnet: Row) -> str | None:
    """When the rows' regular-training clean accuracies are ordered opposite to the paper's, a sentence saying so."""
    paper_lr = paper_table9(lrnet.model).get("reg_clean")
    paper_res = paper_table9(resnet.model).get("reg_clean")
    cell_lr, cell_res = lrnet.cells.get("reg_clean"), resnet.cells.get("reg_clean")
    if None in (paper_lr, paper_res, cell_lr, cell_res) or cell_lr.summary is None or cell_res.summary is None:
        return None
    ours = cell_lr.summary.mean - cell_res.summary.mean
    if ours == 0 or (ours > 0) == (paper_lr > paper_res):
        return None
    return (f"regular-training clean accuracy ordered opposite to the paper's: {lrnet.network} "
            f"{100 * cell_lr.summary.mean:.1f} vs {resnet.network} {100 * cell_res.summary.mean:.1f} (paper "
            f"{paper_lr} vs {paper_res})")


def assess(rows: list[Row], tests: list[Comparison]) -> list[Assessment]:
    """Each of the paper's claims against the comparison of the rows of its two models (lrrobust-trained rows),
    not resolved when either row has an unconverged run of the claim's training kind."""
    model = {r.network: r.model for r in rows if not r.outside}
    by_name = {r.network: r for r in rows if not r.outside}
    out = []
    for claim in PAPER_CLAIMS:
        found = [t for t in tests if t.column.key == claim.column and model.get(t.lrnet) == claim.lrnet
                 and model.get(t.resnet) == claim.resnet]
        if not found:
            out.append(Assessment(claim, "not measured", f"no {claim.lrnet} and {claim.resnet} rows tested"))
            continue
        if len(found) > 1:  # several variants of one model (e.g. two widths): not one claim
            out.append(Assessment(claim, "not measured", f"{len(found)} pairs of {claim.lrnet} and {claim.resnet} rows"))
            continue
        t = found[0]
        if t.test is None:
            out.append(Assessment(claim, "not measured", t.reason or "no paired test"))
            continue
        diff = 100 * t.test.pooled.difference
        seeds = f"{len(t.seeds)} seed{'s' if len(t.seeds) != 1 else ''}"
        detail = (f"{diff:+.1f} points (paper {claim.paper_difference:+.1f}), {t.test.decision_text()} over "
                  f"{t.test.pooled.n} paired images, {seeds}")
        reason = None
        if t.test.significant and t.test.seeds == 1:
            verdict = "indicative"
            reason = f"1 training seed, {'in' if diff > 0 else 'against'} the paper's direction"
        elif t.test.significant:
            verdict = "supported" if diff > 0 else "contradicted"
        else:
            verdict = "not resolved"
            detail += " (not significant" + (": seeds disagree in sign" if not t.test.consistent else "") + ")"
        pair = [by_name[t.lrnet], by_name[t.resnet]]
        unconverged = unconverged_reason(pair, t.column.training)
        if unconverged is not None:
            reason = unconverged
            detail = f"the paired test alone: {verdict}, {detail}"
            verdict = "not resolved"
        out.append(Assessment(claim, verdict, detail, reason, clean_order_caveat(*pair)))
    return out


def claims_sentence(assessments: list[Assessment]) -> str:
    """One sentence: which of the paper's claims the data support, contradict or leave open."""
    parts = []
    for verdict in VERDICTS:
        chosen = [a for a in assessments if a.verdict == verdict]
        if chosen:
            parts.append(f"{verdict}: " + "; ".join(f"{a.claim.text} ({_said(a)})" for a in chosen))
    counts = {v: sum(a.verdict == v for a in assessments) for v in VERDICTS}
    indicative = f", finds {counts['indicative']} only indicative (one training seed)" if counts["indicative"] else ""
    return (f"Of the paper's {len(assessments)} Table 9 claims (Sec. 6.2), this data supports {counts['supported']}, "
            f"contradicts {counts['contradicted']}{indicative} and leaves "
            f"{counts['not resolved'] + counts['not measured']} open. " + ". ".join(p[0].upper() + p[1:] for p in parts)
            + ".")


def _said(a: Assessment) -> str:
    """What the sentence says of one claim: its reason and caveat, then its figures."""
    return "; ".join(x for x in (a.reason, a.caveat, a.detail) if x)


def claims_md(rows: list[Row], tests: list[Comparison]) -> str:
    """The report's section on the paper's claims: the sentence and a table."""
    from lrrobust.report.tables import md_table

    assessments = assess(rows, tests)
    table = md_table(["claim (adversarial training)", "paper", "verdict", "this data"],
                     [[a.claim.text, f"{a.claim.paper_difference:+.1f}", a.verdict_text, a.detail]
                      for a in assessments])
    return "\n".join(["## The paper's claims\n", claims_sentence(assessments) + "\n", table])
