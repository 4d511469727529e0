"""LightningModules more than one method uses: ``ssd`` (the SSD detector SSDIR builds on),
``landmark_baselines`` (PFLD and the heatmap baseline), ``digits`` (the harness's reference
task). Each takes its network (``model=``); a method's own tasks live in its folder."""
