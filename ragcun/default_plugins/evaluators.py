from ragcun.hookspecs import hookimpl


@hookimpl
def register_evaluators(register):
    """Built-in evaluators (see ragcun/evaluation/)."""
    register("beir", "ragcun.evaluation.beir_eval:BeirEvaluator",
             summary="BEIR-format datasets: exact top-k for any distance, beir/pytrec_eval NDCG, MAP, Recall, P, MRR")
