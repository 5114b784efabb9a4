"""`kpop eval`: pass@1 / pass@k and greedy accuracy of a checkpoint on held-out tasks.

passk.py holds the estimator (pure), tasks.py which held-out tasks are used, runner.py drives the
engine and the agent loop, table.py formats the result. Importing this package imports nothing
heavy; vLLM is imported only when `run_eval` starts an engine.
"""
