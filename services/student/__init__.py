"""The student side of the loop: fine-tune a student on a dataset, evaluate it, compare strategies."""
