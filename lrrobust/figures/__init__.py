"""The paper's figures of learnt local relation layers, drawn from a checkpoint (Hu et al., ICCV 2019, Sec. 6.1).

- ``prior``: Fig. 4, the learnt geometric prior of every layer (``lrrobust plot prior``).
- ``relation``: Eq. 2-5 at one pixel: appearance composability, geometric prior, aggregation weights.
- ``adversarial``: an evaluation's adversarial image, regenerated from its records and seed.
- ``relation_plot``: Fig. 5, query/key maps and aggregation weights on a clean and an adversarial image
  (``lrrobust plot relation``).
- ``layers``: the local relation layers of a model and the inputs they see; ``canvas``: drawing helpers.
"""
