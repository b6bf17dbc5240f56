"""``ce``: the labels' cross-entropy alone, a run without a teacher (images or token positions).

    $ logitcache train --out runs/base --student resnet20 --dataset cifar100:data@train --loss ce

Every run's total has the cross-entropy term, ``ce_weight * CE`` (train/image_task.py, ``token_sums.py``);
``--loss ce`` adds nothing to it, so it has no module and reads no teacher.
"""

from __future__ import annotations

from .declarations import Loss, register_loss

register_loss(Loss("ce", None, "the labels' cross-entropy alone, no teacher (never in a list)", tokens=True))
