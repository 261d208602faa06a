"""``python -m oodseg`` — the same as the ``oodseg`` command (handy under ``torchrun -m``)."""
from oodseg.cli import main

main()
