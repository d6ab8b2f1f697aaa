using System.Net;
using System.Net.Sockets;
using Ferry.Connector.Flows;
using Ferry.Core.ControlPlane;
using Ferry.Core.Model;

namespace Ferry.Connector.Health;

/// <summary>Checks, from where this connector sits, whether each resource of its network resolves and answers, so the controller can spot connectors that disagree.</summary>
public sealed class ResourceChecker(INameResolver resolver, TimeSpan connectTimeout)
{
    /// <summary>How many resources are checked at once; enough to finish a large network quickly without a burst of sockets.</summary>
    public const int MaxConcurrent = 8;

    /// <summary>The resource resolves (or is an IP) and answers on its port, or has no single TCP port to try.</summary>
    public const string Ok = "ok";

    /// <summary>The resource's name does not resolve from this connector.</summary>
    public const string Unresolvable = "unresolvable";

    /// <summary>Nothing answers on the resource's port from this connector.</summary>
    public const string Unreachable = "unreachable";

    /// <summary>The resource is a range or wildcard (or is malformed), which cannot be checked as one host.</summary>
    public const string Unchecked = "unchecked";

    private readonly INameResolver _resolver = resolver ?? throw new ArgumentNullException(nameof(resolver));
    private readonly TimeSpan _timeout = connectTimeout > TimeSpan.Zero
        ? connectTimeout
        : throw new ArgumentOutOfRangeException(nameof(connectTimeout), connectTimeout, "the connect timeout must be positive");

    /// <summary>Checks every resource, at most <see cref="MaxConcurrent"/> at once; results come in input order, and only cancellation throws.</summary>
    public async Task<ResourceCheck[]> CheckAsync(IReadOnlyList<ResourceGrant> resources, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(resources);
        var results = new ResourceCheck[resources.Count];
        var options = new ParallelOptions { MaxDegreeOfParallelism = MaxConcurrent, CancellationToken = ct };
        await Parallel.ForEachAsync(Enumerable.Range(0, resources.Count), options, async (i, token) =>
        {
            results[i] = await CheckOneAsync(resources[i], token);
        });
        return results;
    }

    private async Task<ResourceCheck> CheckOneAsync(ResourceGrant resource, CancellationToken ct)
    {
        try
        {
            return await CheckResourceAsync(resource, ct);
        }
        catch (Exception e) when (!ct.IsCancellationRequested)
        {
            // One resource's surprise (a resolver that throws, an odd socket error) must not cost the report on all the others.
            return new ResourceCheck(resource.Id, Unchecked, $"the check failed: {e.Message}");
        }
    }

    private async Task<ResourceCheck> CheckResourceAsync(ResourceGrant resource, CancellationToken ct)
    {
        if (!ResourceAddress.TryParse(resource.Address, out var address, out var addressError))
        {
            return new ResourceCheck(resource.Id, Unchecked, addressError);
        }
        switch (address.Kind)
        {
            case ResourceAddressKind.Wildcard:
                return new ResourceCheck(resource.Id, Unchecked, "a wildcard name cannot be checked as one host");
            case ResourceAddressKind.Cidr:
                // TryParse keeps a "/32" (or "/128") as a CIDR; it still names one host, so it is checked like an IP.
                if (!TryGetSingleHost(address.Canonical, out var host))
                {
                    return new ResourceCheck(resource.Id, Unchecked, "an address range cannot be checked as one host");
                }
                return await ProbeAsync(resource, host, resolvedFrom: null, ct);
            case ResourceAddressKind.Ip:
                return await ProbeAsync(resource, IPAddress.Parse(address.Canonical), resolvedFrom: null, ct);
            default:
                return await ResolveAndProbeAsync(resource, address.Canonical, ct);
        }
    }

    private async Task<ResourceCheck> ResolveAndProbeAsync(ResourceGrant resource, string name, CancellationToken ct)
    {
        NameResolution resolution;
        using (var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct))
        {
            // Resolving is bounded too: a host resolver that hangs would otherwise hold up the whole report.
            timeout.CancelAfter(_timeout);
            try
            {
                resolution = await _resolver.ResolveAsync(name, timeout.Token);
            }
            catch (OperationCanceledException) when (!ct.IsCancellationRequested)
            {
                return new ResourceCheck(resource.Id, Unresolvable, $"resolving '{name}' got no answer within {Seconds}");
            }
        }
        if (!resolution.IsFound)
        {
            return new ResourceCheck(resource.Id, Unresolvable, resolution.Message.Length > 0 ? resolution.Message : $"'{name}' has no address");
        }
        // IPv4 first: private networks are far more often reachable over it.
        var chosen = resolution.Addresses.FirstOrDefault(a => a.AddressFamily == AddressFamily.InterNetwork || a.IsIPv4MappedToIPv6)
            ?? resolution.Addresses[0];
        return await ProbeAsync(resource, chosen, resolvedFrom: name, ct);
    }

    private async Task<ResourceCheck> ProbeAsync(ResourceGrant resource, IPAddress address, string? resolvedFrom, CancellationToken ct)
    {
        if (address.IsIPv4MappedToIPv6)
        {
            address = address.MapToIPv4();
        }
        var resolved = resolvedFrom is null ? "" : $"resolves to {address}; ";
        if (!PortSet.TryParse(resource.Tcp, out var tcp, out var portError))
        {
            return new ResourceCheck(resource.Id, Unchecked, resolved + portError);
        }
        // Any port, or none, leaves no port the resource promises to answer on; probing one would only guess.
        if (tcp.Lowest is not { } port || tcp.ToString() == "all")
        {
            return new ResourceCheck(resource.Id, Ok, resolved + "no single TCP port to check");
        }

        var endpoint = new IPEndPoint(address, port);
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
        timeout.CancelAfter(_timeout);
        Socket? socket = null;
        try
        {
            // Created inside the try: on a host without IPv6 the constructor itself throws, and that is an answer about reachability.
            socket = new Socket(address.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
            await socket.ConnectAsync(endpoint, timeout.Token);
        }
        catch (SocketException e)
        {
            return new ResourceCheck(resource.Id, Unreachable, $"{resolved}{endpoint}: {SocketErrors.Describe(e.SocketErrorCode)}");
        }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested)
        {
            return new ResourceCheck(resource.Id, Unreachable, $"{resolved}{endpoint}: no answer within {Seconds}");
        }
        finally
        {
            // The connection only proves something answers; close it at once so the check holds nothing open on the resource.
            socket?.Dispose();
        }
        return new ResourceCheck(resource.Id, Ok, $"{resolved}{endpoint} answers");
    }

    private string Seconds => $"{_timeout.TotalSeconds:0.###} s";

    private static bool TryGetSingleHost(string cidr, out IPAddress host)
    {
        host = IPAddress.None;
        var slash = cidr.IndexOf('/', StringComparison.Ordinal);
        if (slash < 0 || !IPAddress.TryParse(cidr[..slash], out var network))
        {
            return false;
        }
        var full = network.AddressFamily == AddressFamily.InterNetwork ? "32" : "128";
        if (cidr[(slash + 1)..] != full)
        {
            return false;
        }
        host = network;
        return true;
    }
}
