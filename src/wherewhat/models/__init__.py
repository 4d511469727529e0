"""Networks more than one method uses (plain PyTorch, no Lightning), and networks as specs.

``ssd`` / ``vgg_lite`` (the detector SSDIR and LZU build on), ``landmark_baselines`` and
``face_landmarks`` (the baselines WorldComp2D is compared with), ``digits`` (the harness's
reference model), ``spec`` (``@configurable``, ``module_spec``, ``build_module``). A method's
own networks live in ``wherewhat.methods.<name>``.
"""
