"""Work that reads the database and runs models: the layer the Celery tasks call.

Each pipeline reads through hitl's selectors and models, computes with ``workers.ml`` (torch and
numpy), and writes back through hitl's services, which keep the state machines, the gate and
the trust history. hitl itself never imports this package, so the web never loads torch.
"""
