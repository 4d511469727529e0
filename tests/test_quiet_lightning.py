"""quiet_lightning hides only what the pipeline expects, and restores the loggers."""

import logging
import warnings

from wherewhat.training.quiet import quiet_lightning


def test_expected_warnings_hidden_others_kept_and_logger_levels_restored():
    logger = logging.getLogger("lightning.pytorch")
    logger.setLevel(logging.INFO)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet_lightning([r".*frozen encoder is untrained.*"]):
            assert logger.level == logging.WARNING
            warnings.warn("the frozen encoder is untrained", UserWarning, stacklevel=1)
            warnings.warn(
                "The train_dataloader does not have many workers", UserWarning, stacklevel=1
            )
            warnings.warn("loss is NaN at step 3", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["loss is NaN at step 3"]
    assert logger.level == logging.INFO
    logger.setLevel(logging.NOTSET)
