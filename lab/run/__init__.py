"""The run: the generic scenario runner, its judgement, the record, the live presenter, the bench."""
