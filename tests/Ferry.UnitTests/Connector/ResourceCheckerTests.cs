using System.Net;
using System.Net.Sockets;
using Ferry.Connector.Flows;
using Ferry.Connector.Health;
using Ferry.Core.ControlPlane;
using Ferry.Core.Flows;
using Ferry.Core.Model;
using Ferry.UnitTests.Flows;

namespace Ferry.UnitTests.Connector;

public sealed class ResourceCheckerTests
{
    private static readonly TimeSpan ConnectTimeout = TimeSpan.FromSeconds(3);

    private static CancellationToken Token => TestContext.Current.CancellationToken;

    private static ResourceGrant Resource(string id, string address, string tcp = "none", string udp = "none")
        => new(id, id, "nw_test", address, tcp, udp);

    /// <summary>A resolver no test expects to be asked; it fails the check loudly if it is.</summary>
    private static readonly StubResolver Unused = new((name, _) => throw new InvalidOperationException($"nothing should resolve '{name}'"));

    private static StubResolver Answers(params IPAddress[] addresses) => new((_, _) => Task.FromResult(NameResolution.Found(addresses)));

    private static async Task<ResourceCheck> CheckOneAsync(ResourceChecker checker, ResourceGrant resource)
    {
        var results = await checker.CheckAsync([resource], Token).WaitAsync(FlowTestSupport.Bound, Token);
        return Assert.Single(results);
    }

    [Fact]
    public async Task An_IP_whose_port_accepts_is_ok_and_the_socket_is_closed_at_once()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        var port = ((IPEndPoint)listener.LocalEndpoint).Port;

        var check = await CheckOneAsync(new ResourceChecker(Unused, ConnectTimeout), Resource("rs_db", "127.0.0.1", tcp: $"{port},{port + 1}"));

        Assert.Equal(ResourceChecker.Ok, check.Status);
        Assert.Equal("rs_db", check.ResourceId);
        Assert.Equal($"127.0.0.1:{port} answers", check.Detail);
        // The checker connected for real, and has already hung up: the accepted end reads the end of the stream.
        using var accepted = await listener.AcceptTcpClientAsync(Token).AsTask().WaitAsync(FlowTestSupport.Bound, Token);
        var read = await accepted.GetStream().ReadAsync(new byte[1], Token).AsTask().WaitAsync(FlowTestSupport.Bound, Token);
        Assert.Equal(0, read);
    }

    [Fact]
    public async Task A_closed_port_is_unreachable_and_names_the_port_and_the_refusal()
    {
        var port = FlowTestSupport.ClosedPort();

        var check = await CheckOneAsync(new ResourceChecker(Unused, ConnectTimeout), Resource("rs_db", "127.0.0.1", tcp: $"{port}"));

        Assert.Equal(ResourceChecker.Unreachable, check.Status);
        Assert.Contains($"127.0.0.1:{port}", check.Detail, StringComparison.Ordinal);
        Assert.Contains("connection refused", check.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public async Task The_lowest_TCP_port_is_the_one_probed()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        var port = ((IPEndPoint)listener.LocalEndpoint).Port;

        // Written out of order on purpose: the probe goes to the lowest port, not the first one listed.
        var check = await CheckOneAsync(new ResourceChecker(Unused, ConnectTimeout), Resource("rs_web", "127.0.0.1", tcp: $"{port + 1}-{port + 5},{port}"));

        Assert.Equal(ResourceChecker.Ok, check.Status);
        Assert.Contains($":{port} answers", check.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_name_that_does_not_resolve_is_unresolvable_with_the_resolvers_message()
    {
        var resolver = new StubResolver((name, _) => Task.FromResult(NameResolution.Failed(FlowStatus.NameNotFound, $"DNS says '{name}' does not exist (NXDOMAIN)")));

        var check = await CheckOneAsync(new ResourceChecker(resolver, ConnectTimeout), Resource("rs_db", "db.corp.internal", tcp: "5432"));

        Assert.Equal(ResourceChecker.Unresolvable, check.Status);
        Assert.Equal("DNS says 'db.corp.internal' does not exist (NXDOMAIN)", check.Detail);
    }

    [Fact]
    public async Task A_name_without_addresses_and_without_a_message_says_so()
    {
        var resolver = new StubResolver((_, _) => Task.FromResult(new NameResolution(FlowStatus.Ok, [], "")));

        var check = await CheckOneAsync(new ResourceChecker(resolver, ConnectTimeout), Resource("rs_db", "db.corp.internal", tcp: "5432"));

        Assert.Equal(ResourceChecker.Unresolvable, check.Status);
        Assert.Contains("no address", check.Detail, StringComparison.Ordinal);
        Assert.Contains("db.corp.internal", check.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_resolver_that_hangs_is_unresolvable_after_the_timeout()
    {
        var resolver = new StubResolver(async (_, ct) =>
        {
            await Task.Delay(Timeout.Infinite, ct);
            throw new InvalidOperationException("unreachable");
        });

        var check = await CheckOneAsync(new ResourceChecker(resolver, TimeSpan.FromMilliseconds(200)), Resource("rs_db", "db.corp.internal", tcp: "5432"));

        Assert.Equal(ResourceChecker.Unresolvable, check.Status);
        Assert.Contains("db.corp.internal", check.Detail, StringComparison.Ordinal);
        Assert.Contains("no answer within 0.2 s", check.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_name_is_resolved_and_its_IPv4_address_is_probed_first()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        var port = ((IPEndPoint)listener.LocalEndpoint).Port;
        string? asked = null;
        var resolver = new StubResolver((name, _) =>
        {
            asked = name;
            // IPv6 listed first: the checker must still pick the IPv4 address, where the listener is.
            return Task.FromResult(NameResolution.Found([IPAddress.IPv6Loopback, IPAddress.Loopback]));
        });

        var check = await CheckOneAsync(new ResourceChecker(resolver, ConnectTimeout), Resource("rs_db", "DB.Corp.Internal.", tcp: $"{port}"));

        Assert.Equal("db.corp.internal", asked);
        Assert.Equal(ResourceChecker.Ok, check.Status);
        Assert.Equal($"resolves to 127.0.0.1; 127.0.0.1:{port} answers", check.Detail);
    }

    [Fact]
    public async Task A_resolved_name_whose_port_is_closed_is_unreachable_and_says_where_it_resolved()
    {
        var port = FlowTestSupport.ClosedPort();

        var check = await CheckOneAsync(new ResourceChecker(Answers(IPAddress.Loopback), ConnectTimeout), Resource("rs_db", "db.corp.internal", tcp: $"{port}"));

        Assert.Equal(ResourceChecker.Unreachable, check.Status);
        Assert.Contains("resolves to 127.0.0.1", check.Detail, StringComparison.Ordinal);
        Assert.Contains($"127.0.0.1:{port}: connection refused", check.Detail, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("10.0.0.0/24", "an address range cannot be checked as one host")]
    [InlineData("fd00::/64", "an address range cannot be checked as one host")]
    [InlineData("*.corp.internal", "a wildcard name cannot be checked as one host")]
    public async Task Ranges_and_wildcards_are_unchecked_without_resolving(string address, string detail)
    {
        var check = await CheckOneAsync(new ResourceChecker(Unused, ConnectTimeout), Resource("rs_range", address, tcp: "22"));

        Assert.Equal(ResourceChecker.Unchecked, check.Status);
        Assert.Equal(detail, check.Detail);
    }

    [Fact]
    public async Task A_slash_32_is_one_host_and_is_probed()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        var port = ((IPEndPoint)listener.LocalEndpoint).Port;

        var check = await CheckOneAsync(new ResourceChecker(Unused, ConnectTimeout), Resource("rs_host", "127.0.0.1/32", tcp: $"{port}"));

        Assert.Equal(ResourceChecker.Ok, check.Status);
        Assert.Equal($"127.0.0.1:{port} answers", check.Detail);
    }

    [Fact]
    public async Task An_address_that_does_not_parse_is_unchecked_with_the_parse_error()
    {
        var check = await CheckOneAsync(new ResourceChecker(Unused, ConnectTimeout), Resource("rs_bad", "10.0.0.0/40", tcp: "22"));

        Assert.Equal(ResourceChecker.Unchecked, check.Status);
        Assert.Contains("prefix length", check.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_port_list_that_does_not_parse_is_unchecked_with_the_parse_error()
    {
        var check = await CheckOneAsync(new ResourceChecker(Unused, ConnectTimeout), Resource("rs_bad", "127.0.0.1", tcp: "90-80"));

        Assert.Equal(ResourceChecker.Unchecked, check.Status);
        Assert.Contains("runs backwards", check.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_UDP_only_resource_is_ok_without_a_connection()
    {
        // 192.0.2.1 is TEST-NET-1: nothing answers there, so an "ok" proves no connection was tried.
        var checker = new ResourceChecker(Answers(IPAddress.Parse("192.0.2.1")), TimeSpan.FromMilliseconds(200));

        var results = await checker.CheckAsync(
            [Resource("rs_dns", "192.0.2.1", tcp: "none", udp: "53"), Resource("rs_syslog", "logs.corp.internal", tcp: "none", udp: "514")],
            Token).WaitAsync(FlowTestSupport.Bound, Token);

        Assert.All(results, r => Assert.Equal(ResourceChecker.Ok, r.Status));
        Assert.Equal("no single TCP port to check", results[0].Detail);
        Assert.Equal("resolves to 192.0.2.1; no single TCP port to check", results[1].Detail);
    }

    [Theory]
    [InlineData("all")]
    [InlineData("1-65535")]
    public async Task A_resource_open_on_every_TCP_port_is_ok_without_a_connection(string tcp)
    {
        var check = await CheckOneAsync(new ResourceChecker(Unused, TimeSpan.FromMilliseconds(200)), Resource("rs_any", "192.0.2.1", tcp: tcp));

        Assert.Equal(ResourceChecker.Ok, check.Status);
        Assert.Equal("no single TCP port to check", check.Detail);
    }

    [Fact]
    public async Task A_resolver_that_throws_costs_only_its_own_resource()
    {
        var resolver = new StubResolver((name, _) => name == "broken.corp.internal"
            ? throw new InvalidOperationException("resolver exploded")
            : Task.FromResult(NameResolution.Found([IPAddress.Loopback])));

        var checker = new ResourceChecker(resolver, ConnectTimeout);
        var results = await checker.CheckAsync(
            [Resource("rs_broken", "broken.corp.internal", tcp: "none"), Resource("rs_fine", "fine.corp.internal", tcp: "none")],
            Token).WaitAsync(FlowTestSupport.Bound, Token);

        Assert.Equal(ResourceChecker.Unchecked, results[0].Status);
        Assert.Contains("resolver exploded", results[0].Detail, StringComparison.Ordinal);
        Assert.Equal(ResourceChecker.Ok, results[1].Status);
        Assert.Contains("resolves to 127.0.0.1", results[1].Detail, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Results_keep_the_input_order_and_at_most_eight_run_at_once()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        var open = ((IPEndPoint)listener.LocalEndpoint).Port;
        var closed = FlowTestSupport.ClosedPort();
        var running = 0;
        var most = 0;
        var resolver = new StubResolver(async (name, ct) =>
        {
            var now = Interlocked.Increment(ref running);
            InterlockedMax(ref most, now);
            // Earlier names answer later, so completion order is the reverse of input order.
            var index = int.Parse(name.Split('.')[0][1..], System.Globalization.CultureInfo.InvariantCulture);
            await Task.Delay(TimeSpan.FromMilliseconds(10 * (30 - index)), ct);
            Interlocked.Decrement(ref running);
            return index % 5 == 0
                ? NameResolution.Failed(FlowStatus.NameNotFound, $"'{name}' does not exist")
                : NameResolution.Found([IPAddress.Loopback]);
        });
        var resources = new List<ResourceGrant>();
        for (var i = 0; i < 24; i++)
        {
            resources.Add(i % 4 == 3
                ? Resource($"rs_{i}", "10.9.0.0/16", tcp: "22")
                : Resource($"rs_{i}", $"h{i}.corp.internal", tcp: i % 2 == 0 ? $"{open}" : $"{closed}"));
        }

        var results = await new ResourceChecker(resolver, ConnectTimeout).CheckAsync(resources, Token).WaitAsync(FlowTestSupport.Bound, Token);

        Assert.Equal(resources.Select(r => r.Id), results.Select(r => r.ResourceId));
        // Each resolve takes 70 ms or more, long enough that all eight workers overlap.
        Assert.Equal(8, most);
        for (var i = 0; i < resources.Count; i++)
        {
            var expected = i % 4 == 3 ? ResourceChecker.Unchecked
                : i % 5 == 0 ? ResourceChecker.Unresolvable
                : i % 2 == 0 ? ResourceChecker.Ok
                : ResourceChecker.Unreachable;
            Assert.True(expected == results[i].Status, $"resource {i}: expected {expected}, got {results[i].Status} ({results[i].Detail})");
        }
        Assert.Contains("h5.corp.internal", results[5].Detail, StringComparison.Ordinal);
        Assert.Contains($"127.0.0.1:{closed}", results[1].Detail, StringComparison.Ordinal);
        Assert.Contains($"127.0.0.1:{open} answers", results[2].Detail, StringComparison.Ordinal);
    }

    [Fact]
    public async Task No_resources_give_no_results()
    {
        var results = await new ResourceChecker(Unused, ConnectTimeout).CheckAsync([], Token);

        Assert.Empty(results);
    }

    [Fact]
    public async Task Cancellation_propagates()
    {
        using var cancel = CancellationTokenSource.CreateLinkedTokenSource(Token);
        var resolving = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var resolver = new StubResolver(async (_, ct) =>
        {
            resolving.TrySetResult();
            await Task.Delay(Timeout.Infinite, ct);
            throw new InvalidOperationException("unreachable");
        });

        var checking = new ResourceChecker(resolver, TimeSpan.FromSeconds(30)).CheckAsync([Resource("rs_db", "db.corp.internal", tcp: "5432")], cancel.Token);
        await resolving.Task.WaitAsync(FlowTestSupport.Bound, Token);
        await cancel.CancelAsync();

        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => checking.WaitAsync(FlowTestSupport.Bound, Token));
    }

    [Fact]
    public void PortSet_Lowest_is_the_smallest_allowed_port_or_null()
    {
        Assert.True(PortSet.TryParse("8000-8100,22,443", out var list, out _));
        Assert.Equal(22, list.Lowest);
        Assert.Equal(1, PortSet.All.Lowest);
        Assert.Null(PortSet.None.Lowest);
    }

    private static void InterlockedMax(ref int target, int value)
    {
        var seen = Volatile.Read(ref target);
        while (value > seen)
        {
            var previous = Interlocked.CompareExchange(ref target, value, seen);
            if (previous == seen)
            {
                return;
            }
            seen = previous;
        }
    }
}
