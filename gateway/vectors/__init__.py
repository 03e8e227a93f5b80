"""Vector collections in Qdrant: the store, ownership, embedding through the gateway's upstream, retrieval.

store.py      QdrantStore: the one Qdrant client (server or embedded local mode), its errors translated
filters.py    the metadata filter of a search or a delete, checked and turned into a Qdrant filter
embedder.py   texts to vectors through the catalogue's embedding model (InferenceService.forward)
service.py    VectorService: collections with owners, documents, search (Services.vectors)
retrieval.py  Retrieval: the chat `retrieval` extension (search, passages into the prompt, documents used)
"""
