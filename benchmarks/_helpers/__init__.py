"""Modules the benchmark scripts import, not run.

- :mod:`.common`: the scaffolding every script shares (arguments, threads, the machine and
  its load, the command, busy neighbours, the results file);
- :mod:`.iguane_scores`: scores and damaged inputs of the IGUANe quality benchmarks;
- :mod:`.moved_head`: the moved real head of the preprocessing benchmarks;
- :mod:`.site_family_b`: a second family of synthetic site effects;
- :mod:`.tf_iguane_step`: one TensorFlow training site-step of the original IGUANe.
"""
