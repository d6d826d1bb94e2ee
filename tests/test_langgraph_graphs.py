"""Real compiled LangGraph graphs (no LLM) on StepLogSaver."""

from __future__ import annotations

import operator
from pathlib import Path
from typing import Annotated, Any, TypedDict

import anyio
import pytest

pytest.importorskip("langgraph")

from langchain_core.messages import AIMessage, AnyMessage, HumanMessage
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.types import Command, interrupt

import steplog
from steplog.langgraph import StepLogSaver


class Chat(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]
    steps: Annotated[list[str], operator.add]


def _chat_graph(fail_at: str | None = None) -> StateGraph:
    def node(name: str) -> Any:
        def run(state: Chat) -> dict[str, Any]:
            if name == fail_at:
                raise RuntimeError(f"worker crashed in {name}")
            return {
                "messages": [AIMessage(content=f"{name} ({len(state['messages'])})")],
                "steps": [name],
            }

        return run

    g = StateGraph(Chat)
    for name in ("plan", "search", "answer"):
        g.add_node(name, node(name))
    g.add_edge(START, "plan")
    g.add_edge("plan", "search")
    g.add_edge("search", "answer")
    g.add_edge("answer", END)
    return g


def _cfg(thread: str) -> dict[str, Any]:
    return {"configurable": {"thread_id": thread}}


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "store"


def test_multi_step_run_with_messages_reducer(path: Path) -> None:
    with StepLogSaver.from_path(path) as saver:
        graph = _chat_graph().compile(checkpointer=saver)
        out = graph.invoke({"messages": [HumanMessage(content="hi")], "steps": []}, _cfg("t1"))
        assert [m.content for m in out["messages"]] == [
            "hi",
            "plan (1)",
            "search (2)",
            "answer (3)",
        ]
        out = graph.invoke({"messages": [HumanMessage(content="again")]}, _cfg("t1"))
        assert len(out["messages"]) == 8 and out["steps"][-1] == "answer"
        history = list(graph.get_state_history(_cfg("t1")))
        assert len(history) == 10  # input + 3 steps, twice, plus the first empty input
        assert history[0].values["messages"][-1].content.startswith("answer")


def test_resume_after_a_crash_in_a_new_process_like_saver(path: Path) -> None:
    with StepLogSaver.from_path(path) as saver:
        graph = _chat_graph(fail_at="answer").compile(checkpointer=saver)
        with pytest.raises(RuntimeError, match="crashed"):
            graph.invoke({"messages": [HumanMessage(content="hi")], "steps": []}, _cfg("t"))
    with StepLogSaver.from_path(path) as saver:  # reopened: what a restarted worker sees
        graph = _chat_graph().compile(checkpointer=saver)
        state = graph.get_state(_cfg("t"))
        assert state.next == ("answer",)
        assert state.values["steps"] == ["plan", "search"]
        out = graph.invoke(None, _cfg("t"))  # resume: plan and search are not re-run
        assert out["steps"] == ["plan", "search", "answer"]


def test_interrupt_and_resume_with_command(path: Path) -> None:
    class Approval(TypedDict):
        draft: str
        verdict: str

    def draft(state: Approval) -> dict[str, Any]:
        return {"draft": "refund 20 EUR"}

    def review(state: Approval) -> dict[str, Any]:
        answer = interrupt({"question": "approve?", "draft": state["draft"]})
        return {"verdict": answer}

    g = StateGraph(Approval)
    g.add_node("draft", draft)
    g.add_node("review", review)
    g.add_edge(START, "draft")
    g.add_edge("draft", "review")
    g.add_edge("review", END)
    with StepLogSaver.from_path(path) as saver:
        graph = g.compile(checkpointer=saver)
        out = graph.invoke({"draft": "", "verdict": ""}, _cfg("hitl"))
        assert "__interrupt__" in out
        assert graph.get_state(_cfg("hitl")).next == ("review",)
    with StepLogSaver.from_path(path) as saver:
        graph = g.compile(checkpointer=saver)
        out = graph.invoke(Command(resume="approved"), _cfg("hitl"))
        assert out == {"draft": "refund 20 EUR", "verdict": "approved"}


def test_time_travel_and_update_state_fork(path: Path) -> None:
    with StepLogSaver.from_path(path) as saver:
        graph = _chat_graph().compile(checkpointer=saver)
        graph.invoke({"messages": [HumanMessage(content="hi")], "steps": []}, _cfg("tt"))
        history = list(graph.get_state_history(_cfg("tt")))
        after_plan = next(s for s in history if s.next == ("search",))
        # replay from a past checkpoint id
        out = graph.invoke(None, after_plan.config)
        assert out["steps"] == ["plan", "search", "answer"]
        # fork: edit the past state and continue from there
        forked = graph.update_state(after_plan.config, {"steps": ["edited"]})
        out = graph.invoke(None, forked)
        assert out["steps"] == ["plan", "edited", "search", "answer"]
        assert graph.get_state(_cfg("tt")).values["steps"][-1] == "answer"
        # the original branch is still there in the history
        ids = [
            s.config["configurable"]["checkpoint_id"] for s in graph.get_state_history(_cfg("tt"))
        ]
        assert after_plan.config["configurable"]["checkpoint_id"] in ids


def test_subgraph_checkpoints_live_in_their_namespace(path: Path) -> None:
    class Inner(TypedDict):
        steps: Annotated[list[str], operator.add]

    inner = StateGraph(Inner)
    inner.add_node("inner_a", lambda s: {"steps": ["inner_a"]})
    inner.add_node("inner_b", lambda s: {"steps": ["inner_b"]})
    inner.add_edge(START, "inner_a")
    inner.add_edge("inner_a", "inner_b")
    inner.add_edge("inner_b", END)

    outer = StateGraph(Inner)
    outer.add_node("before", lambda s: {"steps": ["before"]})
    outer.add_node("sub", inner.compile(checkpointer=True))
    outer.add_edge(START, "before")
    outer.add_edge("before", "sub")
    outer.add_edge("sub", END)
    from langgraph.checkpoint.memory import InMemorySaver

    reference = outer.compile(checkpointer=InMemorySaver()).invoke({"steps": []}, _cfg("sub"))
    with StepLogSaver.from_path(path) as saver:
        graph = outer.compile(checkpointer=saver)
        out = graph.invoke({"steps": []}, _cfg("sub"))
        assert out == reference  # the same run as on LangGraph's reference saver
        assert out["steps"][-2:] == ["inner_a", "inner_b"]
        namespaces = {t.config["configurable"]["checkpoint_ns"] for t in saver.list(_cfg("sub"))}
        assert "" in namespaces and any(ns.startswith("sub") for ns in namespaces)
        assert saver.store.verify().ok


def test_ainvoke_on_an_async_store(path: Path) -> None:
    async def main() -> dict[str, Any]:
        async with steplog.open_async(path) as store:
            saver = StepLogSaver(store)
            graph = _chat_graph().compile(checkpointer=saver)
            out = await graph.ainvoke(
                {"messages": [HumanMessage(content="hi")], "steps": []}, _cfg("async")
            )
            states = [s async for s in graph.aget_state_history(_cfg("async"))]
            assert len(states) == 5
            return out

    out = anyio.run(main)
    assert out["steps"] == ["plan", "search", "answer"]


def test_growing_chat_is_stored_as_deltas(path: Path) -> None:
    with StepLogSaver.from_path(path) as saver:
        graph = _chat_graph().compile(checkpointer=saver)
        for turn in range(10):
            graph.invoke(
                {"messages": [HumanMessage(content=f"question {turn} " * 40)]}, _cfg("grow")
            )
        run = "lg\x1fc\x1fgrow\x1f"
        records = [cp.state for cp in saver.store.history(run)]
        n = len(list(graph.get_state_history(_cfg("grow"))))
        assert sum(1 for st in records if "c" in st) == n
        # one run holds the checkpoints and their pending writes
        assert [info.run_id for info in saver.store.runs()] == [run]
        assert any("w" in st for st in records)
        # the last checkpoint holds 40 messages (~10 KB); records are stored as deltas
        last = saver.store.load(run)
        assert last is not None and len(last.state["c"][1]) > 8_000
        stored = saver.store._read(
            lambda txn: sum(len(v) for k, v in txn.cursor() if k.startswith(b"S") and len(k) == 18)
        )
    assert stored < n * 8_000 / 5
