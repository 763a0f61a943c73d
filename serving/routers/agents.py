"""The agent roster routing draws from. Sync handlers: FastAPI runs them in its thread pool,
where the blocking database calls belong."""

from __future__ import annotations

from collections import Counter
from typing import Annotated

from fastapi import APIRouter, Path, Response, status

from serving.deps import Authorized, StoreDep
from serving.errors import NotFound, ValidationFailed, responses
from serving.schemas import Agent, Roster, Stored

router = APIRouter(prefix="/v1/agents", tags=["agents"], dependencies=[Authorized])

AgentId = Annotated[Stored, Path(min_length=1, max_length=200, description="The agent's id.")]


@router.get("", response_model=Roster, responses=responses(401))
def list_agents(store: StoreDep) -> Roster:
    """The whole roster, ordered by agent id."""
    return Roster(agents=store.list_agents())


@router.put("", response_model=Roster, responses=responses(401, 413, 422))
def replace_roster(roster: Roster, store: StoreDep) -> Roster:
    """Replace the whole roster atomically (agents not listed are removed)."""
    dupes = sorted(i for i, n in Counter(a.id for a in roster.agents).items() if n > 1)
    if dupes:
        raise ValidationFailed(f"agents: duplicate agent ids {dupes[:20]}", fields=["agents"])
    store.replace_agents(roster.agents)
    return Roster(agents=store.list_agents())


@router.get("/{agent_id}", response_model=Agent, responses=responses(401, 404))
def get_agent(agent_id: AgentId, store: StoreDep) -> Agent:
    agent = store.get_agent(agent_id)
    if agent is None:
        raise NotFound(f"no agent {agent_id!r}", fields=["agent_id"])
    return agent


@router.put(
    "/{agent_id}",
    response_model=Agent,
    responses={201: {"model": Agent, "description": "Created."}, **responses(401, 422)},
)
def upsert_agent(agent: Agent, response: Response, agent_id: AgentId, store: StoreDep) -> Agent:
    """Create or replace one agent (201 when new, 200 when replaced)."""
    if agent.id != agent_id:
        raise ValidationFailed(
            f"id: body id {agent.id!r} differs from the path's {agent_id!r}", fields=["id"]
        )
    if store.upsert_agent(agent):
        response.status_code = status.HTTP_201_CREATED
    return agent


@router.delete("/{agent_id}", status_code=status.HTTP_204_NO_CONTENT, responses=responses(401, 404))
def delete_agent(agent_id: AgentId, store: StoreDep) -> Response:
    if not store.delete_agent(agent_id):
        raise NotFound(f"no agent {agent_id!r}", fields=["agent_id"])
    return Response(status_code=status.HTTP_204_NO_CONTENT)
