"""``python -m finetune``: the fine-tune command line (:func:`finetune.runner.main`)."""
import sys

from finetune.runner import main

sys.exit(main())
