"""Tasks: the built-in arithmetic task (arith.py), tool-calling records (toolcall.py), Spider-format
Text-to-SQL (spider.py) and the built-in SQL demo (sql_demo.py).  They read files through
rlkit/records.py; rlkit/data.py picks one by ``data.task`` (tasks never import data.py)."""
