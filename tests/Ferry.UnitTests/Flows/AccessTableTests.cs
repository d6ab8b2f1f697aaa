using System.Net;
using Ferry.Core.ControlPlane;
using Ferry.Core.Flows;

namespace Ferry.UnitTests.Flows;

public sealed class AccessTableTests
{
    private const string Alice = "device/dv_alice";
    private const string Bob = "device/dv_bob";

    private static readonly ResourceGrant Corp = new("rs_corp", "corp", "nw_1", "*.corp.internal", "all", "none");
    private static readonly ResourceGrant Db = new("rs_db", "db", "nw_1", "db.corp.internal", "5432", "none");
    private static readonly ResourceGrant Subnet = new("rs_net", "subnet", "nw_1", "10.0.0.0/16", "22,80,443", "53");
    private static readonly ResourceGrant Host = new("rs_host", "host", "nw_1", "10.0.5.0/24", "8000-8100", "none");
    private static readonly ResourceGrant Loopback = new("rs_lo", "loopback", "nw_1", "127.0.0.1", "6379", "none");
    private static readonly ResourceGrant Everything = new("rs_all", "exit", "nw_1", "0.0.0.0/0", "all", "all");

    private static AccessTable Table(params AccessEntry[] entries) => new(entries);

    [Fact]
    public void The_exact_name_beats_the_wildcard()
    {
        var table = Table(new(Alice, Corp), new(Alice, Db), new(Bob, Corp));

        var ok = table.Check(Alice, FlowProtocol.Tcp, "db.corp.internal", 5432);
        Assert.Equal(FlowStatus.Ok, ok.Status);
        Assert.Same(Db, ok.Resource);

        // The wildcard allows every port, but the more specific resource decides.
        var port = table.Check(Alice, FlowProtocol.Tcp, "db.corp.internal", 22);
        Assert.Equal(FlowStatus.Denied, port.Status);
        Assert.Contains("allows TCP ports 5432, not 22", port.Message, StringComparison.Ordinal);

        // Bob holds the wildcard only; the exact name is not his.
        var bob = table.Check(Bob, FlowProtocol.Tcp, "db.corp.internal", 5432);
        Assert.Equal(FlowStatus.Denied, bob.Status);
        Assert.Contains("device/dv_bob is not granted resource 'db'", bob.Message, StringComparison.Ordinal);
        Assert.DoesNotContain("5432", bob.Message, StringComparison.Ordinal);

        Assert.Same(Corp, table.Check(Bob, FlowProtocol.Tcp, "wiki.corp.internal", 443).Resource);
        Assert.Same(Corp, table.Check(Bob, FlowProtocol.Tcp, "WIKI.corp.internal.", 443).Resource);
    }

    [Fact]
    public void The_smaller_CIDR_beats_the_larger()
    {
        var table = Table(new(Alice, Subnet), new(Alice, Host));
        var narrow = table.Check(Alice, FlowProtocol.Tcp, "10.0.5.9", 8080);
        Assert.Equal(FlowStatus.Ok, narrow.Status);
        Assert.Same(Host, narrow.Resource);

        var blocked = table.Check(Alice, FlowProtocol.Tcp, "10.0.5.9", 22);
        Assert.Equal(FlowStatus.Denied, blocked.Status);
        Assert.Contains("'host' (10.0.5.0/24) allows TCP ports 8000-8100, not 22", blocked.Message, StringComparison.Ordinal);

        Assert.Same(Subnet, table.Check(Alice, FlowProtocol.Tcp, "10.0.6.9", 22).Resource);
        Assert.Same(Subnet, table.Check(Alice, FlowProtocol.Tcp, "::ffff:10.0.6.9", 22).Resource);
    }

    [Fact]
    public void No_matching_resource_is_NoSuchResource_and_a_granted_elsewhere_resource_is_Denied()
    {
        var table = Table(new(Alice, Db), new(Bob, Subnet));

        var none = table.Check(Alice, FlowProtocol.Tcp, "mail.example.com", 25);
        Assert.Equal(FlowStatus.NoSuchResource, none.Status);
        Assert.Contains("'mail.example.com'", none.Message, StringComparison.Ordinal);
        Assert.Null(none.Resource);

        var notAlice = table.Check(Alice, FlowProtocol.Tcp, "10.0.0.1", 22);
        Assert.Equal(FlowStatus.Denied, notAlice.Status);
        Assert.Same(Subnet, notAlice.Resource);
    }

    [Fact]
    public void Protocols_are_checked_separately()
    {
        var table = Table(new(Alice, Subnet), new(Alice, Db));
        Assert.Equal(FlowStatus.Ok, table.Check(Alice, FlowProtocol.Udp, "10.0.0.2", 53).Status);
        var udp = table.Check(Alice, FlowProtocol.Udp, "10.0.0.2", 22);
        Assert.Equal(FlowStatus.Denied, udp.Status);
        Assert.Contains("allows UDP ports 53, not 22", udp.Message, StringComparison.Ordinal);
        var noUdp = table.Check(Alice, FlowProtocol.Udp, "db.corp.internal", 5432);
        Assert.Equal(FlowStatus.Denied, noUdp.Status);
        Assert.Contains("allows no UDP", noUdp.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void An_address_is_not_reachable_through_a_name_resource()
    {
        var table = Table(new(Alice, Db), new(Alice, Corp));
        var raw = table.Check(Alice, FlowProtocol.Tcp, "10.0.0.5", 5432);
        Assert.Equal(FlowStatus.NoSuchResource, raw.Status);
        Assert.Contains("no IP or CIDR resource covers 10.0.0.5", raw.Message, StringComparison.Ordinal);

        // Once the connector resolved the name, its addresses are fine: the resource was the name.
        var resolved = table.CheckResolved(Alice, FlowProtocol.Tcp, Db, "db.corp.internal", IPAddress.Parse("10.0.0.5"), 5432);
        Assert.Equal(FlowStatus.Ok, resolved.Status);
    }

    [Theory]
    [InlineData("127.0.0.1", "loopback")]
    [InlineData("127.0.0.53", "loopback")]
    [InlineData("::1", "loopback")]
    [InlineData("169.254.169.254", "metadata")]
    [InlineData("169.254.10.1", "link-local")]
    [InlineData("fe80::1", "link-local")]
    [InlineData("0.0.0.0", "unspecified")]
    [InlineData("::ffff:127.0.0.1", "loopback")]
    public void Special_addresses_need_an_explicit_resource(string address, string what)
    {
        var table = Table(new(Alice, Everything), new(Alice, new ResourceGrant("rs_v6", "v6", "nw_1", "::/0", "all", "all")));
        var refused = table.Check(Alice, FlowProtocol.Tcp, address, 80);
        Assert.Equal(FlowStatus.Denied, refused.Status);
        Assert.Contains(what, refused.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void An_explicit_resource_opens_a_special_address_and_a_broader_one_does_not()
    {
        var table = Table(new(Alice, Loopback), new(Alice, Everything), new(Alice, new ResourceGrant("rs_ll", "ll", "nw_1", "169.254.0.0/16", "all", "none")));
        Assert.Equal(FlowStatus.Ok, table.Check(Alice, FlowProtocol.Tcp, "127.0.0.1", 6379).Status);
        Assert.Equal(FlowStatus.Denied, table.Check(Alice, FlowProtocol.Tcp, "127.0.0.2", 6379).Status);
        Assert.Equal(FlowStatus.Ok, table.Check(Alice, FlowProtocol.Tcp, "169.254.1.1", 80).Status);
        // The link-local block does not cover the metadata service: that takes a resource naming it.
        var metadata = table.Check(Alice, FlowProtocol.Tcp, "169.254.169.254", 80);
        Assert.Equal(FlowStatus.Denied, metadata.Status);
        Assert.Contains("metadata", metadata.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_name_that_resolves_to_a_special_address_is_refused_unless_an_explicit_resource_allows_it()
    {
        var table = Table(new(Alice, Corp), new(Bob, Corp), new(Bob, Loopback));
        var rebound = table.CheckResolved(Alice, FlowProtocol.Tcp, Corp, "evil.corp.internal", IPAddress.Loopback, 6379);
        Assert.Equal(FlowStatus.Denied, rebound.Status);
        Assert.Contains("'evil.corp.internal' resolved to 127.0.0.1, which is a loopback address", rebound.Message, StringComparison.Ordinal);
        Assert.Equal(FlowStatus.Denied, table.CheckResolved(Alice, FlowProtocol.Tcp, Corp, "m.corp.internal", IPAddress.Parse("169.254.169.254"), 80).Status);
        Assert.Equal(FlowStatus.Ok, table.CheckResolved(Bob, FlowProtocol.Tcp, Corp, "cache.corp.internal", IPAddress.Loopback, 6379).Status);
    }

    [Fact]
    public void Unparseable_grants_are_left_out_and_reported()
    {
        var table = Table(new(Alice, new ResourceGrant("rs_bad", "bad", "nw_1", "10.0.0.0/99", "all", "none")), new(Alice, Db));
        Assert.Equal(1, table.ResourceCount);
        Assert.Contains(table.Problems, p => p.Contains("'bad'", StringComparison.Ordinal));
    }

    [Fact]
    public void Malformed_destinations_are_protocol_errors()
    {
        var table = Table(new AccessEntry(Alice, Corp));
        Assert.Equal(FlowStatus.ProtocolError, table.Check(Alice, FlowProtocol.Tcp, "127.1", 80).Status);
        Assert.Equal(FlowStatus.ProtocolError, table.Check(Alice, FlowProtocol.Tcp, "a.corp.internal", 0).Status);
    }

    [Fact]
    public void Only_an_exit_network_reaches_public_addresses()
    {
        AccessEntry[] entries = [new(Alice, Everything), new(Alice, Corp)];
        var closed = new AccessTable(entries) { PublicDestinations = false, NetworkName = "corp" };
        var exit = new AccessTable(entries) { PublicDestinations = true, NetworkName = "egress" };

        var literal = closed.Check(Alice, FlowProtocol.Tcp, "203.0.113.9", 443);
        Assert.Equal(FlowStatus.Denied, literal.Status);
        Assert.Contains("203.0.113.9 is a public address, and network 'corp' is not an exit network", literal.Message, StringComparison.Ordinal);
        Assert.Equal(FlowStatus.Ok, closed.Check(Alice, FlowProtocol.Tcp, "10.1.2.3", 443).Status);
        Assert.Equal(FlowStatus.Ok, exit.Check(Alice, FlowProtocol.Tcp, "203.0.113.9", 443).Status);

        // A name that resolves to a public address is refused the same way, so a private network's connector is no way out.
        var resolved = closed.CheckResolved(Alice, FlowProtocol.Tcp, Corp, "www.corp.internal", IPAddress.Parse("198.51.100.7"), 443);
        Assert.Equal(FlowStatus.Denied, resolved.Status);
        Assert.Contains("'www.corp.internal' resolved to 198.51.100.7, a public address", resolved.Message, StringComparison.Ordinal);
        Assert.Equal(FlowStatus.Ok, closed.CheckResolved(Alice, FlowProtocol.Tcp, Corp, "db.corp.internal", IPAddress.Parse("10.0.0.5"), 443).Status);
        Assert.Equal(FlowStatus.Ok, exit.CheckResolved(Alice, FlowProtocol.Tcp, Corp, "www.corp.internal", IPAddress.Parse("198.51.100.7"), 443).Status);
    }
}
