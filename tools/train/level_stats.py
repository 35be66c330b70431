"""Level statistics of the clicks from `eval_prompts.py --diag FILE.npy` (K = 2 levels): how often level 1 is
chosen by the predicted IoU, each level's mIoU alone, the chosen mIoU, and the median area of the level-1 mask
relative to the object.

python3 level_stats.py runs/eval4/run4_coco_diag.npy
"""
import sys

import numpy as np

d = np.load(sys.argv[1]).reshape(-1, 2, 6)  # per click: K=2 levels x (n, k, pred iou, iou, area ratio, recall)
pick = d[:, :, 2].argmax(1)
ch = d[np.arange(len(d)), pick]
print(f"clicks {len(d)}: level 1 picked {np.mean(pick == 1):.1%}; level 0 alone {d[:, 0, 3].mean():.4f}, "
      f"level 1 alone {d[:, 1, 3].mean():.4f}; chosen {ch[:, 3].mean():.4f}; median area ratio of level 1 "
      f"{np.median(d[:, 1, 4]):.2f}, of level 1 when picked {np.median(d[pick == 1, 1, 4]):.2f}")
