"""`spot sim cloud`: an emulator of the Hyperstack API whose VMs are node directories on this machine.

One job per module::

    catalog     flavors, prices, images, regions, default environments
    clock       the emulated clock (microseconds; scaled real time plus manual advances)
    state       the account's records and their JSON persistence (state.json)
    account     environments, key pairs, volumes; CloudError, the API's error answers
    lifecycle   Cloud: VM actions and the state machine that time drives
    billing     per-minute accrual per state (also by UTC hour and by rate event), usage items, credit
    history     billing history: window details, hourly points, billing events, from the same meters
    usage       the usage answer with billing faults applied, and its optional paging
    processes   node directories: boot scripts on ACTIVE, kills on stop (the contract is there)
    real_nodes  --real-nodes: the same effects on real nodes (systemd in a container, ..realnode)
    faults      injected faults and the rate limit
    render      the wire shapes of instances, volumes, key pairs, environments
    routing     requests, JSON answers, the route table
    api         the /v1 routes (Hyperstack's shape)
    admin       the /_sim routes (faults, reclaim, advance, state)
    server      the ASGI app, its background tick, and the runner
"""
