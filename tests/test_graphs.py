"""Tests for llm_tutorial.graphs: the knowledge graph, the GCN, link prediction and fusion."""

from __future__ import annotations

import math

import networkx as nx
import numpy as np
import pandas as pd
import pytest
import torch

from llm_tutorial import graphs
from tests.records import read_record, record_table

# ---------------------------------------------------------------------------- knowledge graph


def hand_extraction() -> graphs.Extraction:
    """Two articles, written out as spaCy would report them."""
    mentions = pd.DataFrame(
        [(0, 0, "Tony Blair", "PERSON"), (0, 0, "Gordon Brown", "PERSON"), (0, 0, "London", "GPE"),
         (0, 1, "Tony Blair", "PERSON"), (0, 1, "Gordon Brown", "PERSON"),
         (1, 0, "Gordon Brown", "PERSON"), (1, 0, "Paris", "GPE"), (1, 1, "London", "ORG"),
         (1, 2, "London", "GPE")],
        columns=["article", "sentence", "entity", "type"])
    triples = pd.DataFrame([("Tony Blair", "meet", "Gordon Brown", 0, 0),
                            ("Gordon Brown", "visit", "Paris", 1, 0)],
                           columns=["subject", "verb", "object", "article", "sentence"])
    return graphs.Extraction(mentions, triples, 2)


def test_normalize_entity():
    assert graphs.normalize_entity("the BBC's") == "BBC"
    assert graphs.normalize_entity("The  Foreign   Office") == "Foreign Office"
    assert graphs.normalize_entity("Blair\u2019s") == "Blair"
    assert graphs.normalize_entity("Jones'") == "Jones"


def test_build_knowledge_graph_by_hand():
    ex = hand_extraction()
    assert ex.entities == [["Tony Blair", "Gordon Brown", "London"], ["Gordon Brown", "Paris", "London"]]
    G = graphs.build_knowledge_graph(ex)
    # ordered by article count, then name
    assert list(G.nodes) == ["Gordon Brown", "London", "Paris", "Tony Blair"]
    assert G.nodes["Gordon Brown"] == {"type": "PERSON", "count": 2, "articles": [0, 1]}
    assert G.nodes["London"]["type"] == "GPE"  # two GPE mentions against one ORG
    assert G["Tony Blair"]["Gordon Brown"] == {"weight": 2, "relations": ["meet"]}
    assert G["London"]["Tony Blair"]["weight"] == 1
    assert G["Gordon Brown"]["Paris"]["relations"] == ["visit"]
    assert G.number_of_edges() == 4
    G2 = graphs.build_knowledge_graph(ex, min_count=2)
    assert list(G2.nodes) == ["Gordon Brown", "London"] and G2["Gordon Brown"]["London"]["weight"] == 1
    with pytest.raises(ValueError, match="lower min_count"):
        graphs.build_knowledge_graph(ex, min_count=3)


def test_extraction_with_spacy():
    from llm_tutorial import assets

    nlp = assets.load_spacy_ner(graphs.KG_COMPONENTS)
    texts = ["Microsoft bought Skype in 2011. Tony Blair met Gordon Brown in London on Monday. "
             "Later, Blair and Brown flew to Paris.",
             "The BBC's reporter said that Skype was bought by Microsoft."]
    ex = graphs.extract_entities_and_relations(nlp, texts)
    assert ex.entities[1] == ["BBC", "Skype", "Microsoft"]
    assert {"Tony Blair", "Gordon Brown", "London", "Paris"} <= set(ex.entities[0])
    assert "Blair" not in ex.entities[0]  # the surname is read as the full name
    triples = set(zip(ex.triples["subject"], ex.triples["verb"], ex.triples["object"], ex.triples["article"],
                      strict=True))
    assert ("Microsoft", "buy", "Skype", 0) in triples
    assert ("Microsoft", "buy", "Skype", 1) in triples  # the passive sentence
    assert ("Tony Blair", "meet", "Gordon Brown", 0) in triples
    G = graphs.build_knowledge_graph(ex)
    assert G["Tony Blair"]["Gordon Brown"]["weight"] == 2  # two sentences name both
    assert G["Microsoft"]["Skype"]["relations"] == ["buy", "buy"]
    assert G.nodes["Skype"]["count"] == 2
    with pytest.raises(ValueError, match="parser"):
        graphs.extract_entities_and_relations(assets.load_spacy_ner(), texts)


def test_edge_index_and_summary():
    G = nx.Graph([("a", "b"), ("b", "c"), ("d", "e")])
    G.add_node("f")
    edge_index, nodes = graphs.to_edge_index(G)
    assert nodes == ["a", "b", "c", "d", "e", "f"]
    assert edge_index.tolist() == [[0, 1, 3, 1, 2, 4], [1, 2, 4, 0, 1, 3]]
    s = graphs.graph_summary(G, top_k=2)
    assert (s["nodes"], s["edges"], s["components"], s["isolated_nodes"]) == (6, 3, 3, 1)
    assert s["largest_component_share"] == pytest.approx(0.5)
    assert s["density"] == pytest.approx(3 / 15)
    assert s["mean_degree"] == pytest.approx(1.0) and s["median_degree"] == 1.0
    assert s["top_nodes"] == [("b", 2), ("a", 1)]
    dist = graphs.degree_distribution(G)
    assert dist["degree"].tolist() == [1, 2] and dist["nodes"].tolist() == [4, 1]


def test_unknown_node_names_close_matches():
    import matplotlib

    matplotlib.use("Agg")
    G = graphs.build_knowledge_graph(hand_extraction())
    with pytest.raises(ValueError, match="Tony Blair"):
        graphs.draw_neighbourhood(G, "Tony Blaire")
    ax = graphs.draw_neighbourhood(G, "Gordon Brown", max_nodes=3)
    assert "Gordon Brown: 3 neighbours, the 2 most frequent shown" == ax.get_title()
    texts = {t.get_text() for t in ax.texts}
    assert "meet" in texts


# ---------------------------------------------------------------------------- GCN


def test_normalized_adjacency_by_hand():
    # the path 0 - 1 - 2: degrees with self-loops 2, 3, 2
    edge_index = torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]])
    adj = graphs.normalized_adjacency(edge_index, 3).to_dense()
    r6 = 1 / math.sqrt(6)
    expected = torch.tensor([[1 / 2, r6, 0], [r6, 1 / 3, r6], [0, r6, 1 / 2]])
    torch.testing.assert_close(adj, expected)
    torch.testing.assert_close(adj, adj.T)
    torch.testing.assert_close(adj.sum(1), torch.tensor([0.5 + r6, 1 / 3 + 2 * r6, 0.5 + r6]))
    no_loops = graphs.normalized_adjacency(edge_index, 3, add_self_loops=False).to_dense()
    torch.testing.assert_close(no_loops, torch.tensor([[0, 1 / math.sqrt(2), 0],
                                                       [1 / math.sqrt(2), 0, 1 / math.sqrt(2)],
                                                       [0, 1 / math.sqrt(2), 0]]))


def test_adjacency_errors():
    with pytest.raises(ValueError, match="at least one"):
        graphs.normalized_adjacency(torch.empty(2, 0, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="node 5.*num_nodes=3"):
        graphs.normalized_adjacency(torch.tensor([[0, 5], [5, 0]]), 3)
    with pytest.raises(ValueError, match="node -1"):
        graphs.normalized_adjacency(torch.tensor([[0, -1], [-1, 0]]), 3)
    with pytest.raises(ValueError, match=r"shape \[2, E\]"):
        graphs.normalized_adjacency(torch.tensor([[0, 1], [1, 0], [1, 2]]), 3)


def random_graph(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    one_way = torch.randint(0, 12, (2, 30), generator=g)
    one_way[:, 0] = torch.tensor([3, 3])  # a self-loop
    return torch.randn(12, 5, generator=g), torch.cat([one_way, one_way.flip(0)], dim=1)


def test_gcn_layer_equals_dense_reference():
    x, edge_index = random_graph()
    torch.manual_seed(0)
    layer = graphs.GCNLayer(5, 4)
    with torch.no_grad():
        layer.bias.copy_(torch.randn(4))
    out = layer(x, graphs.normalized_adjacency(edge_index, 12))
    assert out.shape == (12, 4)
    torch.testing.assert_close(out, graphs.dense_gcn_reference(x, edge_index, layer.linear.weight, layer.bias))


def test_gcn_layer_equals_torch_geometric():
    pyg = pytest.importorskip("torch_geometric.nn")
    x, edge_index = random_graph(1)
    torch.manual_seed(0)
    conv = pyg.GCNConv(5, 4)
    layer = graphs.GCNLayer(5, 4)
    with torch.no_grad():
        conv.bias.copy_(torch.randn(4))
        layer.linear.weight.copy_(conv.lin.weight)
        layer.bias.copy_(conv.bias)
    torch.testing.assert_close(layer(x, graphs.normalized_adjacency(edge_index, 12)), conv(x, edge_index))


def test_gcn_shapes():
    x, edge_index = random_graph()
    model = graphs.GCN(5, 8, 3, dropout=0.5).eval()
    adj = graphs.normalized_adjacency(edge_index, 12)
    assert model(x, adj).shape == (12, 3) and model.embed(x, adj).shape == (12, 8)


def test_karate_club_gcn_beats_mlp():
    data = graphs.karate_club_data()
    assert data.x.shape == (34, 34) and data.edge_index.shape == (2, 156)
    assert data.labels[0] == 0 and data.labels[33] == 1 and int(data.labels.sum()) == 17
    gcn = graphs.train_node_classifier(data.x, data.edge_index, data.labels, seed=0)
    mlp = graphs.train_node_classifier(data.x, data.edge_index, data.labels, use_edges=False, seed=0)
    assert gcn.accuracy >= 0.85
    assert mlp.accuracy <= 0.6  # one-hot features of unlabelled nodes never meet a gradient
    assert len(gcn.history) == 200 and gcn.history["loss"].iloc[-1] < gcn.history["loss"].iloc[0]
    again = graphs.train_node_classifier(data.x, data.edge_index, data.labels, seed=0)
    assert torch.equal(again.predictions, gcn.predictions)


# ---------------------------------------------------------------------------- link prediction


def test_heuristics_match_networkx():
    G = nx.karate_club_graph()
    edge_index, _ = graphs.to_edge_index(G)
    pairs = [(0, 33), (1, 2), (5, 16), (24, 25), (9, 12), (4, 10)]
    tensor_pairs = torch.tensor(pairs).T
    cn = graphs.common_neighbours_scores(edge_index, tensor_pairs, 34)
    assert cn.tolist() == [len(list(nx.common_neighbors(G, u, v))) for u, v in pairs]
    aa = graphs.adamic_adar_scores(edge_index, tensor_pairs, 34)
    np.testing.assert_allclose(aa, [s for _, _, s in nx.adamic_adar_index(G, pairs)])


def test_roc_auc_matches_sklearn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    scores = rng.integers(0, 5, 200) + labels  # many ties
    assert graphs.roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))


def test_split_edges_invariants():
    G = nx.karate_club_graph()
    split = graphs.split_edges(G, test_fraction=0.2, seed=3)
    key = lambda t: {tuple(p) for p in t.T.tolist()}  # noqa: E731
    train, pos, neg = key(split.train_edges), key(split.test_pos), key(split.test_neg)
    full = {(min(u, v), max(u, v)) for u, v in G.edges}
    assert len(pos) == len(neg) == split.test_pos.shape[1] == round(0.2 * 78) == 16
    assert len(train) == 78 - 16 and train | pos == full and not train & pos
    assert not neg & full and all(u < v for u, v in neg | pos | train)
    assert split.test_labels.tolist() == [1] * 16 + [0] * 16
    assert split.train_edge_index.shape == (2, 2 * 62)
    again = graphs.split_edges(G, test_fraction=0.2, seed=3)
    assert torch.equal(again.test_neg, split.test_neg)
    with pytest.raises(ValueError, match="test_fraction"):
        graphs.split_edges(G, test_fraction=1.0)
    with pytest.raises(ValueError, match="non-edges"):
        graphs.split_edges(nx.complete_graph(5), test_fraction=0.5)


def test_link_predictor_and_table():
    G = nx.karate_club_graph()
    split = graphs.split_edges(G, test_fraction=0.15, seed=0)
    lp = graphs.train_link_predictor(split, np.eye(34, dtype=np.float32), hidden=16, out_dim=8, steps=60)
    scores = lp.scores(split.test_pairs)
    assert scores.shape == (24,) and lp.embeddings().shape == (34, 8)
    np.testing.assert_array_equal(scores, graphs.train_link_predictor(
        split, np.eye(34, dtype=np.float32), hidden=16, out_dim=8, steps=60).scores(split.test_pairs))
    table = graphs.link_prediction_table(split, {"GCN": scores}, n_resamples=50)
    assert table["method"].tolist() == ["GCN", "common neighbours", "Adamic-Adar", "random"]
    assert ((table["low"] <= table["roc_auc"]) & (table["roc_auc"] <= table["high"])).all()
    with pytest.raises(ValueError, match="rows for 34 nodes"):
        graphs.train_link_predictor(split, np.eye(30), steps=1)


# ---------------------------------------------------------------------------- fusion


def test_article_graph_embeddings():
    emb = graphs.article_graph_embeddings([["a", "c"], ["z"], ["b"]], ["a", "b", "c"],
                                          np.array([[1.0, 0.0], [0.0, 1.0], [3.0, 2.0]]))
    np.testing.assert_allclose(emb, [[2.0, 1.0], [0.0, 0.0], [0.0, 1.0]])


def test_fusion_table_pairs_the_draws():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 20)
    informative = 2 * np.eye(3)[labels] + 0.3 * rng.standard_normal((60, 3))
    noise = rng.standard_normal((60, 4))
    table = graphs.fusion_table({"noise": noise, "informative": informative}, labels,
                                test_idx=range(0, 60, 3), shots=(2, 5), n_draws=4)
    assert table[["shots", "features"]].values.tolist() == [
        [2, "noise"], [2, "informative"], [5, "noise"], [5, "informative"]]
    first = table[table["features"] == "noise"]
    assert (first["diff"] == 0).all()
    good = table[table["features"] == "informative"]
    assert (good["accuracy"] > 0.9).all() and (good["diff"] > 0.3).all()


# ------------------------------------------------------------------------------ the shipped record

RECORD_SHA256 = "ba1f68a2abd92ab04a84443196442b9fa84df1f92eb2a625e8373c6bbe76aafd"


def test_the_full_profile_record_holds_the_notebooks_full_checks():
    """`data/results/graphs_generative.csv`, what notebook 14's full profile measured and its smoke
    run shows: the file is the one recorded, and its numbers pass the notebook's checks."""
    rows, provenance = read_record("graphs_generative", RECORD_SHA256)
    assert provenance["date"] == "2026-12-06" and "exit 0" in provenance["commit"]
    graph, links, fusion, generative = (record_table(rows, t) for t in ("graph", "links", "fusion", "generative"))
    assert graph.loc["graph: entities", "value"] > 4000 and graph.loc["graph: edges", "value"] > 10_000
    assert graph.loc["karate: GCN accuracy", "value"] >= graph.loc["karate: MLP accuracy", "value"] + 0.3
    gcn = links.loc["GCN encoder (MiniLM name features)"]
    assert gcn["low"] > links.loc["random", "high"] and gcn["roc_auc"] > 0.75
    assert fusion.loc["16 a class: graph alone", "low"] > 0.4
    value = generative["value"]
    assert value["VAE test -ELBO"] < value["independent pixels NLL"] - 2
    assert value["CVAE judged share"] >= 0.9 and value["CVAE judged share low"] > 0.5
