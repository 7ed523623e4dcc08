"""The ``lrrobust`` command line: train, train-adv, eval-attack, report, study, models, bench, plot, demo."""

from __future__ import annotations

import typer

from lrrobust.commands import OneLineGroup, bench_op, bench_train, evaluate, models, plot, study, train

app = typer.Typer(
    name="lrrobust",
    help="Local Relation Networks under adversarial attack: the op, the zoo, PGD training and evaluation.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    cls=OneLineGroup,
)
bench_app = typer.Typer(help="Measure speed and memory; write figures to BENCHMARKS.md by hand.", no_args_is_help=True,
                        cls=OneLineGroup)
app.add_typer(bench_app, name="bench")

for _module in (bench_op, bench_train, models, train, evaluate, study, plot):
    _module.register(app, bench_app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
