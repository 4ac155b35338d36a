"""Run as a script, outside the source tree with PYTHONPATH unset (tests/test_install.py, test_colcon.py):
the bringup functions of all three launch files resolve every file they name, from the install."""

from pathlib import Path

import vla_steering_node
from vla_steer_bringup import bringup
from vla_steering_node.node import default_dictionary
from vla_steering_node.share import share_file

where = Path(vla_steering_node.__file__).resolve()
named = [default_dictionary(), *(share_file(bringup.PACKAGE, f"config/{name}.yaml") for name in
                                 ("steering_node", "ur5_driver", "eval_ci", "eval_demo"))]
named += [share_file(bringup.PACKAGE, f"launch/{name}")
          for name in ("sim.launch.py", "hardware.launch.py", "steering_node.launch.py")]
specs = [bringup.steering_node(), *bringup.simulation(), *bringup.hardware(emulate=True)[1]]
for spec in specs:
    for value in spec.parameters.values():
        if isinstance(value, str) and value.endswith((".yaml", ".yml")):
            named.append(Path(value))
missing = [str(p) for p in named if not Path(p).exists()]
assert not missing, missing
print("ok", where, share_file(bringup.PACKAGE, "config/steering_node.yaml"))
