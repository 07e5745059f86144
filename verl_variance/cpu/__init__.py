"""verl on CPU: the second plugin (``verl_variance_cpu``), what makes verl-variance testable without a GPU.

The ``cpu`` platform, the ``hf`` rollout and reward-model server, the CPU preset (``config/ppo_trainer_cpu.yaml``)
with its process layout, and the speed and determinism patches of verl on a CPU. It imports the methods
(``verl_variance.integration``); they never import it.
"""
