"""``cad-node demo``: synthetic exams through a real node, results drawn for a person to see.

Generates a synthetic chest CT with known nodules, a four-view screening
mammogram with one malignant breast and an OD/OS fundus pair with known ICDR
grades (any of them, ``DemoOptions.exams``); runs a node in this process
(temporary storage, free ports, admin off) and a local destination (a Storage
SCP, PS3.4 Annex B) that keeps what it receives; sends every exam by C-STORE in
one association, waits for every job and delivery, and writes PNGs of the SEG,
SR, burned-in overlay and Grad-CAM results beside the ground truth, and a
one-page ``index.html``, into the output folder.  NOT FOR CLINICAL USE.

Modules: :mod:`.node` (the peers), :mod:`.received` (reading the results),
:mod:`.ct`, :mod:`.mammo`, :mod:`.fundus` (one exam each), :mod:`.page` and
:mod:`.run` (the whole demo).
"""

from cad_node.demo.node import DemoError
from cad_node.demo.run import EXAMS, DemoOptions, run_demo

__all__ = ["EXAMS", "DemoError", "DemoOptions", "run_demo"]
