"""
# Graphs: a knowledge graph from the news, graph convolutions, link prediction, knowledge fusion

Text mentions things, and things are related: *Tony Blair* meets *Gordon Brown*, *Chelsea* plays
*Arsenal*. Writing those relations down as a **graph** (entities as nodes, relations as edges)
gives a structure that a model can reason over, and that a language model's embeddings alone do
not make explicit.

## A knowledge graph from BBC News

`extract_entities_and_relations` runs spaCy over the articles: its named-entity recogniser finds
people, organisations and places (normalised: no leading "the", no trailing "'s", and a lone
surname such as "Blair" read as the full name the same article used, "Tony Blair"), and its
dependency parser gives **subject–verb–object triples** where both ends are entities, from three
patterns:

* `nsubj → verb → dobj`: "*Microsoft* bought *Skype*" gives (Microsoft, buy, Skype),
* `nsubj → verb → prep → pobj`: "*Blair* met with *Bush*" gives (Blair, meet with, Bush),
* `nsubjpass → verb → agent → pobj`: "*Skype* was bought by *Microsoft*" gives the triple of the
  active sentence.

`build_knowledge_graph` turns them into a `networkx.Graph`: an edge joins two entities named in
the same sentence, weighted by the number of such sentences, and carries the verbs of the triples
found between them. The graph is noisy (co-occurrence is not a relation, and the small spaCy model
makes mistakes) but large and free. `graph_summary` and `degree_distribution` describe it; like
most real networks it has a giant connected component and a heavy-tailed degree distribution (a
few hubs such as "UK" or "US", many entities seen once). `draw_neighbourhood` draws one entity's
neighbours.

## Graph convolutional networks (GCN)

A GCN layer (Kipf & Welling 2017) lets every node average its neighbours' features before a
shared linear map:

$$H' = \\hat A \\, H W + b, \\qquad \\hat A = D^{-1/2} (A + I) D^{-1/2},$$

where $A$ is the adjacency matrix, the identity $I$ adds a self-loop (a node keeps its own
features) and $D$ is the degree matrix of $A + I$. The symmetric normalisation divides the message
from $j$ to $i$ by $\\sqrt{d_i d_j}$, so hubs neither shout nor drown. `normalized_adjacency`
builds $\\hat A$ as a sparse matrix (a graph with $E$ edges costs $O(E)$, not $O(n^2)$),
`GCNLayer` applies it exactly as `torch_geometric`'s `GCNConv` does, and `dense_gcn_reference`
writes the same out with dense matrices. Two layers give every node a view of its 2-hop
neighbourhood.

**Semi-supervised node classification** (`karate_club_data`, `train_node_classifier`): in
Zachary's karate club (34 members, 78 friendships; the club split in two after a quarrel) only the
instructor (node 0) and the president (node 33) are labelled. A GCN on one-hot features labels the
other 32 members from the friendships; the same network without edges ($\\hat A = I$, an MLP) can
not, because the features of an unlabelled node never meet a gradient.

## Link prediction

Hide some edges (`split_edges`: held-out edges and as many non-edges), and ask each method to
score both: the ROC-AUC is the probability that a random hidden edge scores above a random
non-edge (0.5 is chance). Heuristics read the training graph only: **common neighbours**
$|N(u) \\cap N(v)|$ and **Adamic–Adar** $\\sum_{w \\in N(u) \\cap N(v)} 1 / \\log |N(w)|$ (a shared
neighbour with few friends says more than a shared hub). `train_link_predictor` learns a GCN
**encoder** $z = \\mathrm{GCN}(X, \\hat A_{\\text{train}})$, whose features $X$ are MiniLM
embeddings of the entity names (`embed_entities`), and a **dot-product decoder**
$\\sigma(z_u \\cdot z_v)$, trained with binary cross-entropy on the training edges against
non-edges sampled afresh at every step. `link_prediction_table` compares them with bootstrap
intervals.

## Knowledge fusion

Does the graph add anything a text encoder does not already know? `article_graph_embeddings`
represents an article by the mean GCN embedding of its entities; `fusion_table` classifies the
five BBC topics from a few labelled articles per class with MiniLM text embeddings alone and with
text and graph embeddings concatenated, over several random draws of the labelled articles.
"""

from __future__ import annotations

import difflib
import itertools
import math
import time
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import numpy as np
import pandas as pd
import torch
from torch import nn

__all__ = [
    "ENTITY_TYPES",
    "KG_COMPONENTS",
    "normalize_entity",
    "Extraction",
    "extract_entities_and_relations",
    "build_knowledge_graph",
    "to_edge_index",
    "graph_summary",
    "degree_distribution",
    "draw_neighbourhood",
    "normalized_adjacency",
    "GCNLayer",
    "GCN",
    "dense_gcn_reference",
    "NodeData",
    "karate_club_data",
    "NodeClassification",
    "train_node_classifier",
    "EdgeSplit",
    "split_edges",
    "common_neighbours_scores",
    "adamic_adar_scores",
    "roc_auc",
    "embed_entities",
    "LinkPredictor",
    "train_link_predictor",
    "link_prediction_table",
    "article_graph_embeddings",
    "fusion_table",
]

ENTITY_TYPES = ("PERSON", "ORG", "GPE")
# spaCy pipes the knowledge graph needs: NER, the parser (sentences and dependencies) and the
# tagger, attribute ruler and lemmatizer (verb lemmas). Pass to `assets.load_spacy_ner`.
KG_COMPONENTS = ("tok2vec", "tagger", "parser", "attribute_ruler", "lemmatizer", "ner")
TYPE_COLOURS = {"PERSON": "tab:blue", "ORG": "tab:orange", "GPE": "tab:green"}

# ---------------------------------------------------------------------------- knowledge graph


def normalize_entity(text: str) -> str:
    """An entity's surface form as a node name: whitespace collapsed, a leading "the" and a
    trailing possessive ("'s", "'") removed, stray quotes and dashes stripped. "the BBC's"
    becomes "BBC"."""
    text = " ".join(text.split()).replace("\u2019", "'")
    if text.lower().startswith("the "):
        text = text[4:]
    for suffix in ("'s", "'"):
        if text.endswith(suffix):
            text = text[: -len(suffix)]
    return text.strip(" \"'-.,:;()")


@dataclass
class Extraction:
    """What spaCy found in `n_articles` articles.

    * `mentions`: one row per entity per sentence (`article`, `sentence`, `entity`, `type`);
    * `triples`: one row per subject–verb–object relation (`subject`, `verb`, `object`,
      `article`, `sentence`).

    `entities` lists each article's distinct entities in order of first mention."""

    mentions: pd.DataFrame
    triples: pd.DataFrame
    n_articles: int

    @property
    def entities(self) -> list[list[str]]:
        out: list[list[str]] = [[] for _ in range(self.n_articles)]
        for article, entity in zip(self.mentions["article"], self.mentions["entity"], strict=True):
            if entity not in out[article]:
                out[article].append(entity)
        return out


def _truncate(text: str, max_chars: int | None) -> str:
    """The text cut to at most `max_chars` characters, at the last line or sentence end."""
    if max_chars is None or len(text) <= max_chars:
        return text
    head = text[:max_chars]
    cut = max(head.rfind("\n"), head.rfind(". ") + 1)
    return head[:cut] if cut > max_chars // 2 else head


def _svo(sent, entity_of: Mapping[int, str]) -> list[tuple[str, str, str]]:
    """The three dependency patterns of the module docstring, on one sentence. `entity_of` maps
    a token's index to the (normalised) entity it is part of."""
    triples = []
    for token in sent:
        verb = token.head
        if token.i not in entity_of or verb.pos_ != "VERB":
            continue
        lemma = (verb.lemma_ or verb.text).lower()
        subject = entity_of[token.i]
        if token.dep_ == "nsubj":
            for child in verb.children:
                if child.dep_ == "dobj" and child.i in entity_of:
                    triples.append((subject, lemma, entity_of[child.i]))
                elif child.dep_ == "prep":
                    for pobj in child.children:
                        if pobj.dep_ == "pobj" and pobj.i in entity_of:
                            triples.append((subject, f"{lemma} {child.lower_}", entity_of[pobj.i]))
        elif token.dep_ == "nsubjpass":  # "X was bought by Y": Y bought X
            for child in verb.children:
                if child.dep_ == "agent":
                    for pobj in child.children:
                        if pobj.dep_ == "pobj" and pobj.i in entity_of:
                            triples.append((entity_of[pobj.i], lemma, subject))
    return [t for t in triples if t[0] != t[2]]


def _surname_aliases(names: Mapping[str, str]) -> dict[str, str]:
    """Within one article, a one-word PERSON ("Blair") stands for the longer PERSON it ends
    ("Tony Blair"), the first one named when there are several."""
    people = [n for n, t in names.items() if t == "PERSON"]
    alias = {}
    for short in people:
        if " " not in short:
            longer = [n for n in people if n != short and n.endswith(" " + short)]
            if longer:
                alias[short] = longer[0]
    return alias


def extract_entities_and_relations(nlp, texts: Sequence[str], types: Sequence[str] = ENTITY_TYPES,
                                   batch_size: int = 32, max_chars: int | None = None) -> Extraction:
    """
    Run spaCy over `texts` and collect the entities of `types` sentence by sentence, and the
    subject–verb–object triples between them (see the module docstring).

    `nlp` must have the NER and the parser; with the tagger, attribute ruler and lemmatizer the
    verbs are lemmas ("bought" → "buy"), without them lower-cased words. Load it with
    `assets.load_spacy_ner(KG_COMPONENTS)`. `max_chars` reads only the start of each article (at
    a line or sentence end): spaCy's parser costs about 0.05–0.1 s per BBC article on a laptop
    core, and the lead paragraphs name most of an article's entities.
    """
    if "ner" not in nlp.pipe_names or "parser" not in nlp.pipe_names:
        raise ValueError(f"the pipeline has {nlp.pipe_names}, but entities and relations need 'ner' "
                         f"and 'parser': load it with assets.load_spacy_ner(graphs.KG_COMPONENTS)")
    types = set(types)
    mention_rows, triple_rows = [], []
    texts = [_truncate(t, max_chars) for t in texts]
    for article, doc in enumerate(nlp.pipe(texts, batch_size=batch_size)):
        names: dict[str, str] = {}  # entity -> its first type in this article
        sentences = []
        for sent in doc.sents:
            entity_of, found = {}, {}
            for ent in sent.ents:
                name = normalize_entity(ent.text)
                if ent.label_ in types and name:
                    found.setdefault(name, ent.label_)
                    names.setdefault(name, ent.label_)
                    entity_of.update((token.i, name) for token in ent)
            sentences.append((found, _svo(sent, entity_of)))
        alias = _surname_aliases(names)
        for s, (found, triples) in enumerate(sentences):
            seen = set()
            for name, label in found.items():
                name = alias.get(name, name)
                if name not in seen:
                    seen.add(name)
                    mention_rows.append((article, s, name, names.get(name, label)))
            for subject, verb, obj in triples:
                subject, obj = alias.get(subject, subject), alias.get(obj, obj)
                if subject != obj:
                    triple_rows.append((subject, verb, obj, article, s))
    mentions = pd.DataFrame(mention_rows, columns=["article", "sentence", "entity", "type"])
    triples = pd.DataFrame(triple_rows, columns=["subject", "verb", "object", "article", "sentence"])
    return Extraction(mentions, triples, len(texts))


def build_knowledge_graph(extraction: Extraction, min_count: int = 1) -> nx.Graph:
    """
    The entity graph of an `Extraction`. Nodes are the entities mentioned in at least
    `min_count` articles, with attributes `type` (the label spaCy gave most often), `count`
    (articles mentioning it) and `articles` (their indices); they are ordered by decreasing
    count, then name. An edge joins two entities named in the same sentence, with `weight` the
    number of such sentences and `relations` the verbs of the subject–verb–object triples found
    between them (one entry per triple, in either direction; see `Extraction.triples` for who
    did what to whom).
    """
    if min_count < 1:
        raise ValueError(f"min_count={min_count}: an entity is mentioned in at least 1 article")
    m = extraction.mentions
    articles: dict[str, set[int]] = defaultdict(set)
    labels: dict[str, Counter] = defaultdict(Counter)
    for article, entity, label in zip(m["article"], m["entity"], m["type"], strict=True):
        articles[entity].add(int(article))
        labels[entity][label] += 1
    kept = sorted((e for e in articles if len(articles[e]) >= min_count),
                  key=lambda e: (-len(articles[e]), e))
    if not kept:
        raise ValueError(f"no entity is mentioned in >= {min_count} articles (of {extraction.n_articles}):"
                         f" lower min_count or extract from more articles")
    G = nx.Graph()
    for e in kept:
        label = sorted(labels[e].items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
        G.add_node(e, type=label, count=len(articles[e]), articles=sorted(articles[e]))
    weights: Counter = Counter()
    for _, group in m.groupby(["article", "sentence"], sort=True):
        present = sorted(e for e in group["entity"] if e in G)
        weights.update(itertools.combinations(present, 2))
    for (u, v), w in sorted(weights.items()):
        G.add_edge(u, v, weight=w, relations=[])
    for subject, verb, obj in zip(extraction.triples["subject"], extraction.triples["verb"],
                                  extraction.triples["object"], strict=True):
        if subject in G and obj in G:
            assert G.has_edge(subject, obj), "a triple's ends share a sentence, so they co-occur"
            G[subject][obj]["relations"].append(verb)
    return G


def to_edge_index(G: nx.Graph) -> tuple[torch.Tensor, list]:
    """The graph in PyTorch form: `edge_index`, a `LongTensor` of shape `[2, 2E]` holding every
    edge in both directions (row 0 the source, row 1 the target node's position), and the list
    of nodes in that numbering (the graph's node order). Self-loops are dropped (the GCN adds
    its own); weights are not used."""
    nodes = list(G.nodes)
    index = {n: i for i, n in enumerate(nodes)}
    pairs = [(index[u], index[v]) for u, v in G.edges if u != v]
    if not pairs:
        return torch.empty(2, 0, dtype=torch.long), nodes
    one_way = torch.tensor(pairs, dtype=torch.long).T
    return torch.cat([one_way, one_way.flip(0)], dim=1), nodes


def graph_summary(G: nx.Graph, top_k: int = 10) -> dict[str, Any]:
    """Size and shape of a graph: nodes, edges, density (share of possible edges present),
    connected components, the share of nodes in the largest, isolated nodes, mean and median
    degree, and the `top_k` nodes by degree as `(node, degree)` pairs."""
    n = G.number_of_nodes()
    if n == 0:
        raise ValueError("the graph has no nodes: build it from more articles or a lower min_count")
    degrees = np.array([d for _, d in G.degree()])
    components = list(nx.connected_components(G))
    top = sorted(G.degree(), key=lambda nd: (-nd[1], str(nd[0])))[:top_k]
    return {
        "nodes": n,
        "edges": G.number_of_edges(),
        "density": nx.density(G),
        "components": len(components),
        "largest_component_share": max(len(c) for c in components) / n,
        "isolated_nodes": int((degrees == 0).sum()),
        "mean_degree": float(degrees.mean()),
        "median_degree": float(np.median(degrees)),
        "top_nodes": top,
    }


def degree_distribution(G: nx.Graph) -> pd.DataFrame:
    """How many nodes have each degree (`degree`, `nodes`, `share` of all nodes), degrees >= 1
    only, for a log-log plot: a heavy tail shows as a roughly straight falling line."""
    counts = Counter(d for _, d in G.degree() if d > 0)
    frame = pd.DataFrame(sorted(counts.items()), columns=["degree", "nodes"])
    frame["share"] = frame["nodes"] / max(G.number_of_nodes(), 1)
    return frame


def _check_node(G: nx.Graph, node: Any) -> None:
    if node in G:
        return
    names = [str(n) for n in G.nodes]
    close = difflib.get_close_matches(str(node), names, n=5, cutoff=0.6)
    close += [n for n in names if str(node).lower() in n.lower() and n not in close][: 5 - len(close)]
    hint = f"did you mean {close}?" if close else "no node has a similar name"
    raise ValueError(f"{node!r} is not a node of this graph ({len(names)} nodes): {hint} (an entity "
                     f"mentioned in fewer than min_count articles is not in the graph)")


def draw_neighbourhood(G: nx.Graph, node: Any, ax=None, max_nodes: int = 25, seed: int = 0):
    """
    Draw `node` and its neighbours (the `max_nodes - 1` with the heaviest edges), coloured by
    entity type, edges as thick as the log of their weight, and each edge to `node` that carries
    subject–verb–object relations labelled with its most frequent verb. The spring layout is
    seeded, so the picture is the same every run. Returns the axes.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    _check_node(G, node)
    if max_nodes < 2:
        raise ValueError(f"max_nodes={max_nodes}: show at least the node and one neighbour")
    neighbours = sorted(G[node], key=lambda v: (-G[node][v].get("weight", 1), str(v)))[: max_nodes - 1]
    H = G.subgraph([node, *neighbours])
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 6))
    pos = nx.spring_layout(H, seed=seed)
    colours = [TYPE_COLOURS.get(H.nodes[v].get("type"), "tab:gray") for v in H]
    widths = [0.5 + math.log(H[u][v].get("weight", 1)) for u, v in H.edges]
    edge_colours = ["0.3" if node in (u, v) else "0.8" for u, v in H.edges]
    nx.draw_networkx_edges(H, pos, ax=ax, width=widths, edge_color=edge_colours)
    nx.draw_networkx_nodes(H, pos, ax=ax, node_color=colours,
                           node_size=[900 if v == node else 300 for v in H])
    nx.draw_networkx_labels(H, pos, ax=ax, font_size=8)
    labels = {}
    for v in neighbours:
        relations = G[node][v].get("relations") or []
        if relations:
            labels[(node, v)] = Counter(sorted(relations)).most_common(1)[0][0]
    nx.draw_networkx_edge_labels(H, pos, edge_labels=labels, ax=ax, font_size=7, font_color="darkred")
    present = sorted({H.nodes[v].get("type", "other") for v in H})
    ax.legend(handles=[Patch(color=TYPE_COLOURS.get(t, "tab:gray"), label=t) for t in present],
              fontsize=8, loc="best")
    ax.set_title(f"{node}: {G.degree(node)} neighbours, the {len(neighbours)} most frequent shown")
    ax.axis("off")
    return ax


# ---------------------------------------------------------------------------- GCN


def _check_edge_index(edge_index: Any, num_nodes: int) -> torch.Tensor:
    edge_index = torch.as_tensor(edge_index)
    if edge_index.dim() != 2 or edge_index.shape[0] != 2:
        raise ValueError(f"edge_index must have shape [2, E] (row 0 sources, row 1 targets), got "
                         f"{tuple(edge_index.shape)}; a list of (u, v) pairs needs a transpose")
    if edge_index.shape[1] == 0:
        raise ValueError("edge_index has no edges, and a GCN needs at least one (with no edges it is "
                         "an MLP): check the graph, e.g. a min_count that kept too few entities")
    if edge_index.is_floating_point():
        raise ValueError(f"edge_index holds node positions, integers, got {edge_index.dtype}")
    edge_index = edge_index.long()
    low, high = int(edge_index.min()), int(edge_index.max())
    if low < 0 or high >= num_nodes:
        bad = low if low < 0 else high
        raise ValueError(f"edge_index names node {bad}, but the graph has num_nodes={num_nodes} "
                         f"(ids 0..{num_nodes - 1}): pass the right num_nodes or renumber the edges")
    return edge_index


def normalized_adjacency(edge_index: Any, num_nodes: int, add_self_loops: bool = True) -> torch.Tensor:
    """
    ## The GCN propagation matrix

    $\\hat A = D^{-1/2} (A + I) D^{-1/2}$ as a sparse `[num_nodes, num_nodes]` COO tensor, from
    an `edge_index` of shape `[2, E]`. Entry $\\hat A_{ij}$ weighs the message from node $j$
    (source, row 0) to node $i$ (target, row 1), and $d_i$ counts the edges arriving at $i$,
    as in `torch_geometric`'s `gcn_norm`; an undirected graph (every edge in both directions, as
    `to_edge_index` gives) makes $\\hat A$ symmetric. Existing self-loops are replaced by the
    identity; a repeated edge counts twice. With `add_self_loops=False` it is
    $D^{-1/2} A D^{-1/2}$ (a node without edges then gets a zero row).
    """
    edge_index = _check_edge_index(edge_index, num_nodes)
    source, target = edge_index
    keep = source != target
    source, target = source[keep], target[keep]
    if add_self_loops:
        loops = torch.arange(num_nodes)
        source, target = torch.cat([source, loops]), torch.cat([target, loops])
    weight = torch.ones(source.numel())
    degree = torch.zeros(num_nodes).index_add_(0, target, weight)
    inv_sqrt = degree.pow(-0.5).masked_fill(degree == 0, 0.0)
    values = inv_sqrt[target] * weight * inv_sqrt[source]
    adj = torch.sparse_coo_tensor(torch.stack([target, source]), values, (num_nodes, num_nodes),
                                  check_invariants=True)
    return adj.coalesce()


class GCNLayer(nn.Module):
    """
    One graph convolution, $H' = \\hat A (H W) + b$: a linear map without bias (Glorot-uniform
    initialised), propagation over the graph, then the bias. That is `torch_geometric`'s
    `GCNConv` order, so copying `linear.weight` and `bias` from a `GCNConv` (its `lin.weight`
    and `bias`) gives the same output. Multiplying by $W$ first makes the sparse product act on
    the narrower matrix when `out_dim < in_dim`.
    """

    def __init__(self, in_dim: int, out_dim: int, bias: bool = True):
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim, bias=False)
        nn.init.xavier_uniform_(self.linear.weight)
        self.bias = nn.Parameter(torch.zeros(out_dim)) if bias else None

    def forward(self, x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        assert adj.shape == (x.shape[0], x.shape[0]), "one row of adj per node of x"
        out = torch.sparse.mm(adj, self.linear(x)) if adj.is_sparse else adj @ self.linear(x)
        return out if self.bias is None else out + self.bias


class GCN(nn.Module):
    """Two graph convolutions, $\\hat A \\, \\mathrm{dropout}(\\mathrm{ReLU}(\\hat A X W_1 + b_1))
    W_2 + b_2$: the output of every node depends on its neighbours up to two hops away.
    `embed` returns the hidden layer."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, dropout: float = 0.5):
        super().__init__()
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout={dropout} must be in [0, 1)")
        self.conv1 = GCNLayer(in_dim, hidden)
        self.conv2 = GCNLayer(hidden, out_dim)
        self.dropout = nn.Dropout(dropout)

    def embed(self, x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv1(x, adj))

    def forward(self, x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.dropout(self.embed(x, adj)), adj)


def dense_gcn_reference(x: torch.Tensor, edge_index: Any, weight: torch.Tensor,
                        bias: torch.Tensor | None = None) -> torch.Tensor:
    """The GCN layer with every matrix written out densely, for reading (and testing): build
    $A$, add $I$, divide by $\\sqrt{d_i d_j}$, then $\\hat A X W^\\top + b$ (`weight` has the
    shape of an `nn.Linear` weight, `[out_dim, in_dim]`). $O(n^2)$ memory: small graphs only."""
    n = x.shape[0]
    edge_index = _check_edge_index(edge_index, n)
    A = torch.zeros(n, n, dtype=x.dtype)
    source, target = edge_index
    A.index_put_((target, source), torch.ones(source.numel(), dtype=x.dtype), accumulate=True)
    A.fill_diagonal_(0)  # existing self-loops are replaced by the identity
    A_tilde = A + torch.eye(n, dtype=x.dtype)
    d = A_tilde.sum(dim=1)
    D_inv_sqrt = torch.diag(d.pow(-0.5))
    A_hat = D_inv_sqrt @ A_tilde @ D_inv_sqrt
    out = A_hat @ x @ weight.T
    return out if bias is None else out + bias


# ---------------------------------------------------------------------------- node classification


@dataclass
class NodeData:
    """A graph ready for a GCN: the `networkx` `graph`, node features `x` `[n, d]`, `edge_index`
    `[2, 2E]`, integer `labels` `[n]` and their `label_names`."""

    graph: nx.Graph
    x: torch.Tensor
    edge_index: torch.Tensor
    labels: torch.Tensor
    label_names: list[str]


def karate_club_data() -> NodeData:
    """Zachary's karate club (1977): 34 members, 78 friendships. Labels are the faction each
    member joined after the split (`club`: Mr. Hi = 0, the instructor, node 0; Officer = 1, the
    president's, node 33). Features are one-hot node identities ($X = I$): a node's only
    description is who it is, so whatever a model learns about the others comes from the edges."""
    G = nx.karate_club_graph()
    names = ["Mr. Hi", "Officer"]
    labels = torch.tensor([names.index(G.nodes[v]["club"]) for v in G.nodes])
    edge_index, nodes = to_edge_index(G)
    assert nodes == list(range(34)) and edge_index.shape == (2, 156)
    return NodeData(G, torch.eye(len(nodes)), edge_index, labels, names)


@dataclass
class NodeClassification:
    """The result of `train_node_classifier`: `accuracy` on the unlabelled nodes, the
    `predictions` for every node, the per-step training `history` (`step`, `loss`) and the
    trained `model`."""

    accuracy: float
    predictions: torch.Tensor
    history: pd.DataFrame
    model: GCN


def train_node_classifier(x: torch.Tensor, edge_index: Any, labels: Any,
                          train_nodes: Sequence[int] = (0, 33), use_edges: bool = True,
                          hidden: int = 16, steps: int = 200, lr: float = 0.01,
                          weight_decay: float = 5e-4, dropout: float = 0.5, seed: int = 0
                          ) -> NodeClassification:
    """
    ## Semi-supervised node classification

    Train a two-layer `GCN` (full batch, Adam) with the cross-entropy of the `train_nodes` only,
    and measure the accuracy on all other nodes. `use_edges=False` replaces $\\hat A$ by the
    identity: the same network without the graph, an MLP. Everything runs under `seed` in a
    forked random state, so the result is the same each time and the caller's random state is
    untouched.
    """
    labels = torch.as_tensor(labels).long()
    n = x.shape[0]
    train = torch.as_tensor(list(train_nodes), dtype=torch.long)
    if len(labels) != n:
        raise ValueError(f"{len(labels)} labels for {n} nodes: pass one label per node")
    if train.numel() == 0 or int(train.min()) < 0 or int(train.max()) >= n:
        raise ValueError(f"train_nodes {list(train_nodes)} must be ids in 0..{n - 1}")
    test = torch.ones(n, dtype=torch.bool)
    test[train] = False
    if use_edges:
        adj = normalized_adjacency(edge_index, n)
    else:
        adj = torch.sparse_coo_tensor(torch.arange(n).repeat(2, 1), torch.ones(n), (n, n),
                                      check_invariants=True).coalesce()
    rows = []
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = GCN(x.shape[1], hidden, int(labels.max()) + 1, dropout)
        optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
        model.train()
        for step in range(1, steps + 1):
            loss = nn.functional.cross_entropy(model(x, adj)[train], labels[train])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            rows.append((step, loss.item()))
    model.eval()
    with torch.no_grad():
        predictions = model(x, adj).argmax(dim=1)
    accuracy = (predictions[test] == labels[test]).double().mean().item()
    return NodeClassification(accuracy, predictions, pd.DataFrame(rows, columns=["step", "loss"]), model)


# ---------------------------------------------------------------------------- link prediction


@dataclass
class EdgeSplit:
    """Edges for link prediction, each as `[2, k]` tensors of node ids with `u < v`:
    `train_edges` (the graph a method may see), `test_pos` (held-out edges) and `test_neg`
    (as many node pairs that are edges nowhere in the full graph). `train_edge_index` gives the
    training edges in both directions, `test_pairs` and `test_labels` the held-out pairs
    (positives first) and their 1/0 labels."""

    train_edges: torch.Tensor
    test_pos: torch.Tensor
    test_neg: torch.Tensor
    num_nodes: int
    nodes: list = field(default_factory=list)

    @property
    def train_edge_index(self) -> torch.Tensor:
        return torch.cat([self.train_edges, self.train_edges.flip(0)], dim=1)

    @property
    def test_pairs(self) -> torch.Tensor:
        return torch.cat([self.test_pos, self.test_neg], dim=1)

    @property
    def test_labels(self) -> np.ndarray:
        return np.r_[np.ones(self.test_pos.shape[1]), np.zeros(self.test_neg.shape[1])]


def _undirected(edge_index: torch.Tensor) -> torch.Tensor:
    """Each edge once, as `(min, max)`, sorted, without self-loops."""
    u, v = edge_index.min(dim=0).values, edge_index.max(dim=0).values
    pairs = torch.stack([u, v])[:, u != v]
    return torch.unique(pairs, dim=1)


def _keys(pairs: torch.Tensor | np.ndarray, num_nodes: int) -> np.ndarray:
    pairs = np.asarray(pairs)
    return np.minimum(pairs[0], pairs[1]) * num_nodes + np.maximum(pairs[0], pairs[1])


def split_edges(graph: nx.Graph | torch.Tensor, test_fraction: float = 0.1, seed: int = 0,
                num_nodes: int | None = None) -> EdgeSplit:
    """
    Hold out a random `test_fraction` of the edges of `graph` (a `networkx` graph, numbered as
    `to_edge_index` numbers it, or an `edge_index` with `num_nodes`), and draw as many
    **negative** pairs: distinct node pairs that are not edges of the full graph. The held-out
    edges are removed from `train_edges`, so a method that reads the training graph cannot see
    them. Seeded: the same arguments give the same split.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction={test_fraction} must be in (0, 1), e.g. 0.1")
    if isinstance(graph, nx.Graph):
        edge_index, nodes = to_edge_index(graph)
        num_nodes = len(nodes)
    else:
        nodes = []
        edge_index = torch.as_tensor(graph)
        num_nodes = int(edge_index.max()) + 1 if num_nodes is None and edge_index.numel() else num_nodes
    edge_index = _check_edge_index(edge_index, num_nodes or 0)
    edges = _undirected(edge_index)
    n_edges = edges.shape[1]
    n_test = round(test_fraction * n_edges)
    if n_test < 1 or n_test >= n_edges:
        raise ValueError(f"test_fraction={test_fraction} of {n_edges} edges holds out {n_test}: "
                         f"keep at least one edge on each side")
    n_pairs = num_nodes * (num_nodes - 1) // 2
    if n_pairs - n_edges < n_test:
        raise ValueError(f"the graph has only {n_pairs - n_edges} non-edges, fewer than the {n_test} "
                         f"negatives needed: lower test_fraction")
    rng = np.random.default_rng(seed)
    perm = torch.as_tensor(rng.permutation(n_edges))
    test_pos, train = edges[:, perm[:n_test]], edges[:, perm[n_test:]]
    taken = set(_keys(edges, num_nodes).tolist())
    negatives: list[tuple[int, int]] = []
    while len(negatives) < n_test:
        for u, v in rng.integers(0, num_nodes, size=(2 * n_test + 16, 2)).tolist():
            key = min(u, v) * num_nodes + max(u, v)
            if u != v and key not in taken:
                taken.add(key)
                negatives.append((min(u, v), max(u, v)))
                if len(negatives) == n_test:
                    break
    test_neg = torch.tensor(negatives, dtype=torch.long).T
    return EdgeSplit(train, test_pos, test_neg, num_nodes, nodes)


def _adjacency_csr(edge_index: Any, num_nodes: int):
    from scipy import sparse

    edges = _undirected(_check_edge_index(edge_index, num_nodes)).numpy()
    A = sparse.coo_matrix((np.ones(edges.shape[1]), (edges[0], edges[1])), shape=(num_nodes, num_nodes))
    return (A + A.T).tocsr()


def _check_pairs(pairs: Any, num_nodes: int) -> np.ndarray:
    pairs = np.asarray(pairs)
    if pairs.ndim != 2 or pairs.shape[0] != 2:
        raise ValueError(f"pairs must have shape [2, P], got {pairs.shape}")
    if pairs.size and (pairs.min() < 0 or pairs.max() >= num_nodes):
        raise ValueError(f"pairs name nodes outside 0..{num_nodes - 1}")
    return pairs


def common_neighbours_scores(edge_index: Any, pairs: Any, num_nodes: int) -> np.ndarray:
    """$|N(u) \\cap N(v)|$ for each pair `(u, v)` in `pairs` (`[2, P]`), on the graph of
    `edge_index` (pass the *training* edges). Computed as the dot product of two rows of the
    sparse adjacency matrix."""
    A = _adjacency_csr(edge_index, num_nodes)
    u, v = _check_pairs(pairs, num_nodes)
    return np.asarray(A[u].multiply(A[v]).sum(axis=1)).ravel()


def adamic_adar_scores(edge_index: Any, pairs: Any, num_nodes: int) -> np.ndarray:
    """$\\sum_{w \\in N(u) \\cap N(v)} 1 / \\log |N(w)|$ for each pair (Adamic & Adar 2003), on the
    graph of `edge_index` (pass the *training* edges). A shared neighbour has at least two
    neighbours, so the logarithm is positive."""
    A = _adjacency_csr(edge_index, num_nodes)
    u, v = _check_pairs(pairs, num_nodes)
    degree = np.asarray(A.sum(axis=1)).ravel()
    inv_log = np.where(degree > 1, 1 / np.log(np.maximum(degree, 2)), 0.0)
    return np.asarray(A[u].multiply(A[v]) @ inv_log).ravel()


def roc_auc(labels: Any, scores: Any) -> float:
    """ROC-AUC as the Mann–Whitney statistic: the probability that a random positive scores
    above a random negative, ties counting half. The same number as scikit-learn's
    `roc_auc_score` on binary labels, about 20 times faster (it is recomputed a thousand times
    in a bootstrap)."""
    from scipy.stats import rankdata

    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = labels.sum(), (~labels).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(np.asarray(scores, dtype=float))
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def embed_entities(names: Sequence[str], encoder, tokenizer, max_length: int = 16,
                   batch_size: int = 256) -> np.ndarray:
    """MiniLM embeddings of entity names (`finetuning.embed_texts`, mean pooling), unit
    length: node features that know "Arsenal" and "Chelsea" are both football clubs before the
    graph says anything."""
    from llm_tutorial.finetuning import embed_texts

    vectors = embed_texts(encoder, tokenizer, [str(n) for n in names], max_length, batch_size)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(min=1e-12)


@dataclass
class LinkPredictor:
    """A trained GCN encoder with its inputs: `embeddings()` gives $z$ for every node (computed
    on the training graph, in eval mode), `scores(pairs)` the decoder's logits $z_u \\cdot z_v$,
    `history` the per-step loss."""

    model: GCN
    x: torch.Tensor
    adj: torch.Tensor
    history: pd.DataFrame

    @torch.no_grad()
    def embeddings(self) -> np.ndarray:
        self.model.eval()
        return self.model(self.x, self.adj).numpy()

    def scores(self, pairs: Any) -> np.ndarray:
        z = self.embeddings()
        u, v = _check_pairs(pairs, len(z))
        return (z[u] * z[v]).sum(axis=1)


def train_link_predictor(split: EdgeSplit, x: Any, hidden: int = 128, out_dim: int = 64,
                         steps: int = 200, lr: float = 0.01, weight_decay: float = 0.0,
                         dropout: float = 0.2, seed: int = 0) -> LinkPredictor:
    """
    ## GCN link prediction

    Encoder $z = \\mathrm{GCN}(X, \\hat A_{\\text{train}})$ over the training edges only, decoder
    $p(u \\sim v) = \\sigma(z_u \\cdot z_v)$. Each step scores every training edge (label 1) and
    as many node pairs drawn uniformly at random (label 0; a pair that is a training edge is
    dropped, held-out edges are not looked at) with binary cross-entropy, full batch, Adam.
    Negatives drawn afresh each step keep the model from memorising a fixed set. Seeded, in a
    forked random state.
    """
    x = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    n = split.num_nodes
    if x.shape[0] != n:
        raise ValueError(f"x has {x.shape[0]} rows for {n} nodes: one feature row per node, in the "
                         f"split's node order")
    adj = normalized_adjacency(split.train_edge_index, n)
    pos = split.train_edges
    train_keys = torch.as_tensor(_keys(pos, n))
    generator = torch.Generator().manual_seed(seed)
    rows = []
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = GCN(x.shape[1], hidden, out_dim, dropout)
        optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
        model.train()
        for step in range(1, steps + 1):
            neg = torch.randint(0, n, (2, pos.shape[1]), generator=generator)
            keys = torch.minimum(neg[0], neg[1]) * n + torch.maximum(neg[0], neg[1])
            neg = neg[:, (neg[0] != neg[1]) & ~torch.isin(keys, train_keys)]
            z = model(x, adj)
            logits = torch.cat([(z[pos[0]] * z[pos[1]]).sum(1), (z[neg[0]] * z[neg[1]]).sum(1)])
            target = torch.cat([torch.ones(pos.shape[1]), torch.zeros(neg.shape[1])])
            loss = nn.functional.binary_cross_entropy_with_logits(logits, target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            rows.append((step, loss.item()))
    model.eval()
    return LinkPredictor(model, x, adj, pd.DataFrame(rows, columns=["step", "loss"]))


def link_prediction_table(split: EdgeSplit, scores: Mapping[str, Any] | None = None,
                          n_resamples: int = 1000, seed: int = 0) -> pd.DataFrame:
    """ROC-AUC on the held-out pairs of `split`, with a 95% bootstrap interval over the pairs
    (`evaluation.bootstrap_ci`), for each entry of `scores` (`{method: scores of
    split.test_pairs}`, e.g. the GCN's) and the baselines computed here from the training
    edges: common neighbours, Adamic–Adar, and random scores."""
    from llm_tutorial.evaluation import bootstrap_ci

    pairs, labels = split.test_pairs, split.test_labels
    methods = dict(scores or {})
    methods["common neighbours"] = common_neighbours_scores(split.train_edges, pairs, split.num_nodes)
    methods["Adamic-Adar"] = adamic_adar_scores(split.train_edges, pairs, split.num_nodes)
    methods["random"] = np.random.default_rng(seed).random(len(labels))
    rows = []
    for name, values in methods.items():
        values = np.asarray(values, dtype=float)
        if values.shape != labels.shape:
            raise ValueError(f"{name!r} has {values.shape[0]} scores for {len(labels)} test pairs: "
                             f"score split.test_pairs")
        ci = bootstrap_ci(roc_auc, labels, values, n_resamples=n_resamples, seed=seed)
        rows.append({"method": name, "roc_auc": ci["estimate"], "low": ci["low"], "high": ci["high"]})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------- knowledge fusion


def article_graph_embeddings(article_entities: Sequence[Sequence[str]], nodes: Sequence[Any],
                             node_embeddings: Any) -> np.ndarray:
    """One vector per article: the mean embedding of those of its entities that are nodes of
    the graph (`nodes`, in the row order of `node_embeddings`); a zero vector for an article with
    none (too few articles mention its entities for `min_count`)."""
    node_embeddings = np.asarray(node_embeddings, dtype=np.float32)
    if len(nodes) != len(node_embeddings):
        raise ValueError(f"{len(nodes)} nodes but {len(node_embeddings)} embeddings: pass one row per "
                         f"node, in the same order")
    index = {n: i for i, n in enumerate(nodes)}
    out = np.zeros((len(article_entities), node_embeddings.shape[1]), dtype=np.float32)
    for a, entities in enumerate(article_entities):
        rows = [index[e] for e in entities if e in index]
        if rows:
            out[a] = node_embeddings[rows].mean(axis=0)
    return out


def fusion_table(features: Mapping[str, Any], labels: Any, test_idx: Sequence[int],
                 shots: Sequence[int] = (4, 16), n_draws: int = 10, C: float = 0.1,
                 seed: int = 0) -> pd.DataFrame:
    """
    ## Few-shot classification with and without the graph

    For each feature set in `features` (`{name: array [n_articles, d]}`, e.g. `"text"` and
    `"text + graph"`), train a linear probe (`finetuning.linear_probe(C)`: standardisation and
    logistic regression) on `k` labelled articles per class for each `k` in `shots`, drawn from
    the articles outside `test_idx`, and measure accuracy on `test_idx`. Every feature set sees
    the same `n_draws` draws, so the differences are paired: `diff` is the mean accuracy minus
    that of the first feature set on the same draws. Intervals are 95% Student-t intervals over
    the draws (they say how much the mean would move with other draws, not with another test
    set). Returns one row per (`shots`, `features`) with the time taken.
    """
    from scipy import stats

    from llm_tutorial.finetuning import linear_probe, sample_per_class

    labels = np.asarray(labels)
    test = np.asarray(sorted(set(int(i) for i in test_idx)))
    pool = np.setdiff1d(np.arange(len(labels)), test)
    if not len(features) or len(test) == 0:
        raise ValueError("pass at least one feature set and a non-empty test_idx")
    for name, values in features.items():
        if len(values) != len(labels):
            raise ValueError(f"features {name!r} has {len(values)} rows for {len(labels)} labels")
    accuracy = {}  # (shots, name) -> per-draw accuracies
    seconds = Counter()
    for k in shots:
        for draw in range(n_draws):
            chosen = pool[sample_per_class(labels[pool].tolist(), k, seed=seed + draw)]
            for name, values in features.items():
                start = time.perf_counter()
                values = np.asarray(values)
                probe = linear_probe(C).fit(values[chosen], labels[chosen])
                acc = float((probe.predict(values[test]) == labels[test]).mean())
                accuracy.setdefault((k, name), []).append(acc)
                seconds[(k, name)] += time.perf_counter() - start

    def interval(values: np.ndarray) -> tuple[float, float, float]:
        mean = float(values.mean())
        if len(values) < 2:
            return mean, float("nan"), float("nan")
        half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
        return mean, mean - half, mean + half

    first = next(iter(features))
    rows = []
    for (k, name), accs in accuracy.items():
        accs = np.asarray(accs)
        mean, low, high = interval(accs)
        diff, diff_low, diff_high = interval(accs - np.asarray(accuracy[(k, first)]))
        rows.append({"shots": k, "features": name, "accuracy": mean, "low": low, "high": high,
                     "diff": diff, "diff_low": diff_low, "diff_high": diff_high,
                     "seconds": seconds[(k, name)]})
    return pd.DataFrame(rows)
