"""`edgefleet agent --config agent.yaml`: run the device agent until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse

from edgefleet.agent import log as agent_log
from edgefleet.contract.errors import EdgefleetError


def run_agent(args: argparse.Namespace) -> int:
    agent_log.configure()
    log = agent_log.EventLog("agent")
    try:
        from edgefleet.agent.config import load_config
        from edgefleet.agent.daemon import Agent

        config = load_config(args.config)
        agent_log.configure(config.log_level)
        agent = Agent(config, config_path=args.config)
    except EdgefleetError as exc:
        log.error("startup_failed", error=str(exc))
        return 1
    return agent.run()
