"""AWS network builder: peered regional VPCs where the GPUs are, join parameters and quotas.

The model, in the order a run goes through it:

- `config`     one `InfraConfig` read strictly from `mesh-infra.yaml`;
- `regions`    which regions get a VPC (where a chosen instance type is offered,
               plus the main region, minus excluded and not-opted-in regions);
- `addressing` the append-only region → /16 table and the /19 per zone;
- `desired`    the network we want in each region, as plain data;
- `state`      what exists, found by our tags;
- `plan`       the difference, as ordered changes with reasons;
- `apply` / `destroy` carry changes out, region by region, in bounded parallel;
- `ssm`        join parameters stored in each region's Parameter Store;
- `quotas`     Service Quotas for the chosen types, checked and requested;
- `policy`     the IAM policy that covers every call above;
- `aws`        the one door to boto3: clients, retries with backoff, typed errors;
- `cluster/`   whole clusters in a user's account (`meshctl cluster …`): the
               cross-account role, the versioned spec, coordinators and warm
               instances on top of this network, status, delete with a sweep.

Every entry point takes an `Aws` built from a boto3 session factory, never a
global session, so callers (the CLI, tests, cluster builders) choose the
account, the endpoint and the clock.
"""
