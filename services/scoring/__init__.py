"""Rewards of teacher answers for one student: learnability, SCAS, quality (math-verify, reward models).

Each reward has one interface with a local (weights in this process) and an endpoint (vLLM) implementation.
"""
