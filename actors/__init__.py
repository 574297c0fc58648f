"""The actors: RoomActor (one per room, the only writer of its DAG), MediaActor, and later
UserActor and RemoteServerActor.  Actors never import each other; they talk through the
supervisors they are given at construction."""
