"""flannel's subnet.env, IPv4, dual stack and IPv6 only (issue 17, point 1): the lines and
their order are those of flannel's WriteSubnetFile (pkg/subnet/subnet.go)."""

import ipaddress

import pytest

from overlayd.errors import ConfigError
from overlayd.subnetenv import SubnetEnv, parse

N4, N6 = ipaddress.IPv4Network, ipaddress.IPv6Network

V4 = SubnetEnv(N4("10.244.0.0/16"), N4("10.244.3.0/24"), 1450, False)
DUAL = SubnetEnv(N4("10.244.0.0/16"), N4("10.244.3.0/24"), 1450, True,
                 N6("fd00:10:244::/56"), N6("fd00:10:244:3::/64"))
ONLY6 = SubnetEnv(None, None, 1430, False, N6("fd00:10:244::/56"), N6("fd00:10:244:3::/64"))


@pytest.mark.parametrize("env, text", [
    (V4, "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"),
    (DUAL, "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\n"
           "FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:3::1/64\n"
           "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"),
    (ONLY6, "FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:3::1/64\n"
            "FLANNEL_MTU=1430\nFLANNEL_IPMASQ=false\n"),
])
def test_render_is_flannels_and_parse_reads_it_back(env, text):
    assert env.render() == text
    assert parse(text) == env


@pytest.mark.parametrize("text, message", [
    ("FLANNEL_MTU=1450\n", "FLANNEL_NETWORK is missing"),
    ("FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_MTU=1450\n", "FLANNEL_IPV6_SUBNET is missing"),
    ("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_IPV6_SUBNET=fd00::1/64\n"
     "FLANNEL_MTU=1450\n", "FLANNEL_IPV6_NETWORK is missing"),
    ("FLANNEL_IPV6_NETWORK=10.244.0.0/16\nFLANNEL_IPV6_SUBNET=fd00::1/64\nFLANNEL_MTU=1450\n", "subnet.env: "),
])
def test_a_half_written_family_is_a_config_error(text, message):
    with pytest.raises(ConfigError, match=message):
        parse(text)


def test_a_family_needs_both_its_lines():
    with pytest.raises(ValueError):
        SubnetEnv(N4("10.244.0.0/16"), None, 1450, False)
    with pytest.raises(ValueError):
        SubnetEnv(None, None, 1450, False)
