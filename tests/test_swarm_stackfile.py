"""The compose config → Swarm stack file conversion (no engine): on the config the bundler derives from
the stand-in AI-Infra Matrix source tree, and on small configs for the corners."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bundler.build import plan_release
from bundler.manifest import load_manifest
from installer.swarm.cluster import kernel_has_ipvs
from installer.swarm.stackfile import StackFileError, SwarmLayout, convert, deploy_stages, parse_port
from tests.harness import SOURCE_DIR

ROOT = Path(__file__).resolve().parents[1]
LAYOUT = SwarmLayout(data_label="airgap.ai-infra-matrix.data")
RELEASE = Path("/opt/aimatrix/releases/v0.3.5")


@pytest.fixture(scope="module")
def derived() -> tuple[dict, list[str]]:
    """The production compose config and one-shot services of the stand-in, as the bundler derives them."""
    manifest = load_manifest(ROOT / "manifests/aimatrix.yaml")
    release = plan_release(manifest, SOURCE_DIR, registry="aiharbor.msxf.local/aihpc", tag="v0.3.5",
                           platform="linux/amd64", with_build_bases=False)
    return yaml.safe_load(release.compose.text), release.compose.oneshot


def pins(compose: dict) -> dict[str, str]:
    return {spec["image"]: spec["image"].rsplit(":", 1)[0] + "@sha256:" + f"{index:064x}"
            for index, spec in enumerate(compose["services"].values())}


def plan_of(derived, layout: SwarmLayout = LAYOUT, values: dict | None = None):
    compose, oneshot = derived
    return convert(compose, release=RELEASE, values=values or {"NGINX_PORT": "18080", "POSTGRES_PASSWORD": "p$w"},
                   images=pins(compose), oneshot=set(oneshot), layout=layout)


def test_the_stand_in_stack_file_has_only_what_swarm_reads(derived) -> None:
    plan = plan_of(derived)
    document = plan.document
    assert document["version"] == "3.8"
    for name, service in document["services"].items():
        assert not {"container_name", "depends_on", "restart", "expose"} & set(service), name
        assert "@sha256:" in service["image"]
        assert service["deploy"]["endpoint_mode"] == "dnsrr"
    assert any("container_name dropped" in note for note in plan.notes)
    network = document["networks"]["ai-infra-network"]
    assert network["driver"] == "overlay" and network["attachable"] is True and network["name"] == "ai-infra-network"
    assert document["volumes"]["postgres_data"] == {"name": "ai-infra-postgres-data"}


def test_site_values_are_filled_in_and_dollars_escaped_for_the_cli(derived) -> None:
    document = plan_of(derived).document
    nginx = document["services"]["nginx"]
    assert {"target": 80, "published": 18080, "protocol": "tcp", "mode": "host"} in nginx["ports"]
    postgres = document["services"]["postgres"]
    assert postgres["environment"]["POSTGRES_PASSWORD"] == "p$$w"  # the CLI reads $$ as one $
    redis = document["services"]["redis"]
    assert "$${REDIS_PASSWORD}" in " ".join(redis["command"])  # the container's shell still expands it


def test_one_shots_run_once_and_dependencies_become_stages(derived) -> None:
    plan = plan_of(derived)
    assert set(plan.oneshot) == {"backend-init", "singleuser-builder"}
    init = plan.document["services"]["backend-init"]["deploy"]
    assert init["restart_policy"] == {"condition": "none"} and init["replicas"] == 1
    assert set(plan.oneshot) <= set(plan.pinned)  # the data node has every image: a re-run pulls nothing
    stage = {name: index for index, names in enumerate(plan.stages) for name in names}
    compose, _ = derived
    for name, spec in compose["services"].items():
        for dependency in spec.get("depends_on") or []:
            assert stage[dependency] < stage[name], (dependency, name)
    assert stage["backend-init"] < stage["backend"] < stage["nginx"]
    assert set(plan.up_to(0)["services"]) == set(plan.stages[0])


def test_services_that_mount_anything_are_pinned_to_the_data_node(derived) -> None:
    plan = plan_of(derived)
    services = plan.document["services"]
    for name in ("postgres", "backend", "jupyterhub", "nginx"):
        deploy = services[name]["deploy"]
        assert deploy["placement"]["constraints"] == ["node.labels.airgap.ai-infra-matrix.data == true"], name
        assert deploy["replicas"] == 1 and name in plan.pinned
    for name in ("frontend", "phpldapadmin", "gitea-debug"):
        assert services[name]["deploy"]["mode"] == "global" and name in plan.global_services
    # relative binds are the release folder's, absolute
    assert f"{RELEASE}/src/backend/outputs:/app/outputs" in services["backend"]["volumes"]


def test_a_service_named_every_node_runs_everywhere_unless_it_mounts_release_files(derived) -> None:
    plan = plan_of(derived, SwarmLayout(data_label=LAYOUT.data_label, every_node=("nginx",)))
    assert plan.document["services"]["nginx"]["deploy"]["mode"] == "global"
    with pytest.raises(StackFileError, match="backend.*release folder"):
        plan_of(derived, SwarmLayout(data_label=LAYOUT.data_label, every_node=("backend",)))
    with pytest.raises(StackFileError, match="no such service"):
        plan_of(derived, SwarmLayout(data_label=LAYOUT.data_label, every_node=("ngnix",)))


def test_with_ipvs_ports_go_through_the_ingress_mesh(derived) -> None:
    plan = plan_of(derived, SwarmLayout(data_label=LAYOUT.data_label, endpoint_mode="vip"))
    nginx = plan.document["services"]["nginx"]
    assert nginx["deploy"]["endpoint_mode"] == "vip" and all(p["mode"] == "ingress" for p in nginx["ports"])


def test_an_image_the_registry_does_not_pin_is_refused(derived) -> None:
    compose, oneshot = derived
    images = pins(compose)
    images.pop(compose["services"]["redis"]["image"])
    with pytest.raises(StackFileError, match="redis"):
        convert(compose, release=RELEASE, values={}, images=images, oneshot=set(oneshot), layout=LAYOUT)


def test_ports_in_every_short_form() -> None:
    assert parse_port("8088:8000", "host") == [{"target": 8000, "protocol": "tcp", "mode": "host", "published": 8088}]
    assert parse_port("127.0.0.1:53:53/udp", "host") == [{"target": 53, "protocol": "udp", "mode": "host",
                                                          "published": 53}]
    assert [p["published"] for p in parse_port("9000-9001:9000-9001", "host")] == [9000, 9001]
    assert parse_port({"target": "80", "published": "8080"}, "ingress") == [{"target": 80, "published": 8080,
                                                                            "mode": "ingress"}]
    with pytest.raises(StackFileError):
        parse_port("80:eighty", "host")


def test_a_port_without_host_port_needs_ipvs() -> None:
    compose = {"services": {"web": {"image": "a/web:1", "ports": ["80"]}}}
    with pytest.raises(StackFileError, match="no host port"):
        convert(compose, release=RELEASE, values={}, images={"a/web:1": "a/web@sha256:" + "0" * 64}, oneshot=set(),
                layout=LAYOUT)


def test_dependency_cycles_are_refused() -> None:
    assert deploy_stages({"a": [], "b": ["a"], "c": ["a", "b"]}) == [["a"], ["b"], ["c"]]
    with pytest.raises(StackFileError, match="cycle"):
        deploy_stages({"a": ["b"], "b": ["a"]})


def test_network_mode_cannot_run_on_a_swarm() -> None:
    compose = {"services": {"agent": {"image": "a/agent:1", "network_mode": "host"}}}
    with pytest.raises(StackFileError, match="network_mode"):
        convert(compose, release=RELEASE, values={}, images={"a/agent:1": "a/agent@sha256:" + "0" * 64},
                oneshot=set(), layout=LAYOUT)


def test_ipvs_is_found_where_the_kernel_has_it(tmp_path) -> None:
    proc, sys_, modules = tmp_path / "proc", tmp_path / "sys", tmp_path / "modules"
    (proc / "sys/kernel").mkdir(parents=True)
    (proc / "sys/kernel/osrelease").write_text("6.1.0-test\n")
    assert not kernel_has_ipvs(proc, sys_, modules)
    (modules / "6.1.0-test").mkdir(parents=True)
    (modules / "6.1.0-test/modules.dep").write_text("kernel/net/netfilter/ipvs/ip_vs.ko: kernel/lib/libcrc32c.ko\n")
    assert kernel_has_ipvs(proc, sys_, modules)


def test_swarm_flags_without_swarm_are_refused_and_auto_picks_by_the_kernel() -> None:
    from installer.cli_swarm import swarm_settings_from
    from installer.errors import InstallError

    with pytest.raises(InstallError, match="--swarm-every-node only apply with --swarm"):
        swarm_settings_from(False, "auto", ("nginx",))
    assert swarm_settings_from(False, "auto", ()) is None
    settings = swarm_settings_from(True, "auto", ("nginx,frontend",))
    assert settings.every_node == ["nginx", "frontend"]
    assert settings.endpoint_mode == ("vip" if kernel_has_ipvs() else "dnsrr")


def small(services: dict, **extra) -> dict:
    return {"services": services, **extra}


def convert_small(compose: dict, oneshot: set[str] = frozenset(), deploy_id: str = "", release: Path = RELEASE):
    images = {spec["image"]: spec["image"].split(":")[0] + "@sha256:" + "0" * 64
              for spec in compose["services"].values()}
    return convert(compose, release=release, values={}, images=images, oneshot=set(oneshot), layout=LAYOUT,
                   deploy_id=deploy_id)


def test_restart_policies_follow_compose_and_a_missing_one_heals() -> None:
    plan = convert_small(small({
        "a": {"image": "x/a:1", "restart": "on-failure:5"},
        "b": {"image": "x/b:1"},
        "c": {"image": "x/c:1", "restart": "unless-stopped"},
    }))
    policies = {name: spec["deploy"]["restart_policy"] for name, spec in plan.document["services"].items()}
    assert policies == {"a": {"condition": "on-failure", "max_attempts": 5}, "b": {"condition": "any"},
                        "c": {"condition": "any"}}


def test_a_container_name_stays_resolvable_as_a_network_alias(derived) -> None:
    services = plan_of(derived).document["services"]
    assert services["postgres"]["networks"] == {"ai-infra-network": {"aliases": ["ai-infra-postgres"]}}
    assert services["singleuser-builder"]["networks"] == ["ai-infra-network"]  # no container_name: as it was
    plan = convert_small(small({"a": {"image": "x/a:1", "container_name": "legacy-a"}}))
    assert plan.document["services"]["a"]["networks"] == {"default": {"aliases": ["legacy-a"]}}


def test_one_shots_carry_the_deploy_id_so_each_deploy_runs_them_again(derived) -> None:
    compose, oneshot = derived
    first = convert(compose, release=RELEASE, values={}, images=pins(compose), oneshot=set(oneshot), layout=LAYOUT,
                    deploy_id="d1").document["services"]
    second = convert(compose, release=RELEASE, values={}, images=pins(compose), oneshot=set(oneshot), layout=LAYOUT,
                     deploy_id="d2").document["services"]
    assert first["backend-init"]["labels"]["airgap.deploy"] == "d1" != second["backend-init"]["labels"]["airgap.deploy"]
    assert first["postgres"] == second["postgres"]  # long-running services: the same spec, no restart


def test_profiled_services_are_left_out_as_compose_leaves_them() -> None:
    plan = convert_small(small({"a": {"image": "x/a:1"}, "debug": {"image": "x/d:1", "profiles": ["debug"]}}))
    assert list(plan.document["services"]) == ["a"] and any("debug left out" in note for note in plan.notes)


def test_files_outside_the_release_folder_are_refused() -> None:
    with pytest.raises(StackFileError, match="outside the release folder"):
        convert_small(small({"a": {"image": "x/a:1", "env_file": ["../../etc/shadow"]}}))
    plan = convert_small(small({"a": {"image": "x/a:1", "env_file": [{"path": ".env.prod", "required": True}]}}))
    assert plan.document["services"]["a"]["env_file"] == [f"{RELEASE}/.env.prod"]


def test_a_secret_file_is_named_by_its_content(tmp_path) -> None:
    (tmp_path / "ca.pem").write_text("one")
    compose = small({"a": {"image": "x/a:1", "secrets": ["ca"]}}, secrets={"ca": {"file": "./ca.pem"}})
    first = convert_small(compose, release=tmp_path).document["secrets"]["ca"]["name"]
    (tmp_path / "ca.pem").write_text("two")
    second = convert_small(compose, release=tmp_path).document["secrets"]["ca"]["name"]
    assert first.startswith("ca-") and first != second  # Swarm cannot change a secret: a new one each content


def test_schema_strings_and_what_swarm_cannot_do_are_said() -> None:
    plan = convert_small(small({"a": {
        "image": "x/a:1", "mem_reservation": 1073741824, "ports": ["127.0.0.1:8080:80"],
        "deploy": {"resources": {"limits": {"cpus": 0.5}, "reservations": {"devices": [{"capabilities": ["gpu"]}]}}},
        "healthcheck": {"test": ["CMD", "true"], "start_interval": "1s"},
    }}))
    service = plan.document["services"]["a"]
    assert service["deploy"]["resources"] == {"limits": {"cpus": "0.5"}, "reservations": {"memory": "1073741824"}}
    assert "start_interval" not in service["healthcheck"]
    assert any("cannot bind a port to one address" in note for note in plan.notes)
    with pytest.raises(StackFileError, match="no container port"):
        parse_port({"published": 8080}, "host")
