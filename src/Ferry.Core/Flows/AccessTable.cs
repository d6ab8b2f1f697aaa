using System.Globalization;
using System.Net;
using Ferry.Core.ControlPlane;
using Ferry.Core.Model;

namespace Ferry.Core.Flows;

/// <summary>Who may reach what, as the connector enforces it: the most specific resource covering a destination decides.</summary>
/// <remarks>
/// Names and addresses are separate worlds: a DNS name is matched only by name and wildcard resources (and resolved on the connector),
/// an IP literal only by IP and CIDR resources, so a client cannot reach an address just because some name resource resolves to it.
/// Loopback, link-local, unspecified and metadata addresses need an IP or CIDR resource lying inside their block.
/// </remarks>
public sealed class AccessTable
{
    private readonly Resource[] _resources;

    public AccessTable(IEnumerable<AccessEntry> entries)
    {
        ArgumentNullException.ThrowIfNull(entries);
        var byId = new Dictionary<string, Resource>(StringComparer.Ordinal);
        var problems = new List<string>();
        foreach (var entry in entries)
        {
            var grant = entry.Resource;
            if (!byId.TryGetValue(grant.Id, out var resource))
            {
                if (!TryParse(grant, out resource, out var problem))
                {
                    problems.Add(problem);
                    continue;
                }
                byId.Add(grant.Id, resource);
            }
            resource.Identities.Add(entry.Identity);
        }
        _resources = [.. byId.Values];
        Problems = problems;
    }

    /// <summary>An empty table: every destination is NoSuchResource.</summary>
    public static AccessTable Empty { get; } = new([]);

    /// <summary>Grants that were left out because their address or ports do not parse; the controller validates them, so these mean a version skew.</summary>
    public IReadOnlyList<string> Problems { get; }

    public int ResourceCount => _resources.Length;

    /// <summary>
    /// Whether public addresses may be reached: true for an exit network's connectors (and on clients, which only route).
    /// A connector of any other network refuses them, so it cannot be used as a way out to the internet.
    /// </summary>
    public bool PublicDestinations { get; init; } = true;

    /// <summary>The network named in refusals of public destinations.</summary>
    public string NetworkName { get; init; } = "this network";

    /// <summary>
    /// Whether the network requires a second factor: its grants then name devices with a live second factor, not owners, and a
    /// device without one is told how to give it.
    /// </summary>
    public bool RequiresSecondFactor { get; init; }

    /// <summary>Decides whether <paramref name="identity"/> may open a <paramref name="protocol"/> flow to <paramref name="host"/>:<paramref name="port"/>.</summary>
    public AccessDecision Check(string identity, FlowProtocol protocol, string host, int port)
    {
        ArgumentNullException.ThrowIfNull(identity);
        if (!FlowHeader.TryValidate(protocol, host, port, out var error))
        {
            return new AccessDecision(FlowStatus.ProtocolError, error, null);
        }
        if (FlowHeader.TryGetAddress(host, out var literal))
        {
            var ip = SpecialAddresses.Normalise(literal);
            var best = MostSpecific(r => r.IsIpKind && r.Address.Matches(ip));
            if (best.Count == 0)
            {
                return new AccessDecision(
                    FlowStatus.NoSuchResource,
                    $"no IP or CIDR resource covers {ip}; resources named by DNS name are reached by that name, which the connector resolves",
                    null);
            }
            if (SpecialAddresses.IsSpecial(ip, out var what, out var block) && !best[0].ExplicitlyCovers(ip))
            {
                return new AccessDecision(
                    FlowStatus.Denied,
                    $"{ip} is {what}: the connector reaches it only through an IP or CIDR resource inside {block}, and resource {best[0].Describe()} is broader",
                    best[0].Grant);
            }
            if (!PublicDestinations && PublicAddresses.IsPublic(ip))
            {
                return new AccessDecision(FlowStatus.Denied, NotExit($"{ip} is a public address"), best[0].Grant);
            }
            return Decide(best, identity, protocol, port);
        }
        var name = host.TrimEnd('.').ToLowerInvariant();
        var named = MostSpecific(r => !r.IsIpKind && r.Address.Matches(name));
        if (named.Count == 0)
        {
            return new AccessDecision(FlowStatus.NoSuchResource, $"no resource covers the name '{name}'", null);
        }
        return Decide(named, identity, protocol, port);
    }

    /// <summary>
    /// Decides whether an address that <paramref name="host"/> resolved to may be dialled under <paramref name="resource"/>, which
    /// <see cref="Check"/> allowed. Addresses of a name resource are allowed, except special ones (loopback, metadata…), which need
    /// an IP or CIDR resource of their own that this identity may use.
    /// </summary>
    public AccessDecision CheckResolved(string identity, FlowProtocol protocol, ResourceGrant resource, string host, IPAddress address, int port)
    {
        ArgumentNullException.ThrowIfNull(resource);
        ArgumentNullException.ThrowIfNull(address);
        var ip = SpecialAddresses.Normalise(address);
        var owner = Array.Find(_resources, r => r.Grant.Id == resource.Id);
        if (owner is null)
        {
            return new AccessDecision(FlowStatus.NoSuchResource, $"resource '{resource.Name}' is no longer in the table", null);
        }
        if (owner.IsIpKind && !owner.Address.Matches(ip))
        {
            return new AccessDecision(FlowStatus.Denied, $"{ip} lies outside resource {owner.Describe()}", resource);
        }
        if (!PublicDestinations && PublicAddresses.IsPublic(ip))
        {
            return new AccessDecision(FlowStatus.Denied, NotExit($"'{host}' resolved to {ip}, a public address"), resource);
        }
        if (!SpecialAddresses.IsSpecial(ip, out var what, out var block))
        {
            return new AccessDecision(FlowStatus.Ok, $"{host} resolved to {ip} under resource {owner.Describe()}", resource);
        }
        var direct = Check(identity, protocol, ip.ToString(), port);
        if (direct.IsAllowed)
        {
            return direct;
        }
        return new AccessDecision(
            FlowStatus.Denied,
            $"'{host}' resolved to {ip}, which is {what}: the connector reaches it only through an IP or CIDR resource inside {block} that you are granted",
            resource);
    }

    private string NotExit(string what)
        => $"{what}, and network '{NetworkName}' is not an exit network: its connectors reach private addresses only (an administrator can mark it with 'ferry admin network set {NetworkName} --exit true')";

    private List<Resource> MostSpecific(Func<Resource, bool> matches)
    {
        var best = new List<Resource>();
        var specificity = int.MinValue;
        foreach (var resource in _resources)
        {
            if (!matches(resource))
            {
                continue;
            }
            var s = resource.Address.Specificity;
            if (s > specificity)
            {
                best.Clear();
                specificity = s;
            }
            if (s == specificity)
            {
                best.Add(resource);
            }
        }
        return best;
    }

    // Resources of equal specificity cover the same destinations, so any one of them that allows the flow is enough.
    private AccessDecision Decide(List<Resource> candidates, string identity, FlowProtocol protocol, int port)
    {
        Resource? granted = null;
        foreach (var resource in candidates)
        {
            if (!resource.Identities.Contains(identity))
            {
                continue;
            }
            granted ??= resource;
            if (resource.Ports(protocol).Contains(port))
            {
                return new AccessDecision(FlowStatus.Ok, $"allowed by resource {resource.Describe()}", resource.Grant);
            }
        }
        if (granted is null && RequiresSecondFactor)
        {
            return new AccessDecision(
                FlowStatus.Denied,
                $"network '{NetworkName}' requires a second factor, and {identity} has no live one (none given yet, or it lapsed without traffic): run 'ferry client mfa' on the device, then retry",
                candidates[0].Grant);
        }
        if (granted is null)
        {
            // Saying which ports the resource allows would tell an outsider more than that it exists.
            return new AccessDecision(FlowStatus.Denied, $"{identity} is not granted resource {candidates[0].Describe()}", candidates[0].Grant);
        }
        var protocolName = protocol.ToString().ToUpperInvariant();
        var ports = granted.Ports(protocol);
        var message = ports.IsNone
            ? $"resource {granted.Describe()} allows no {protocolName}"
            : $"resource {granted.Describe()} allows {protocolName} ports {ports}, not {port.ToString(CultureInfo.InvariantCulture)}";
        return new AccessDecision(FlowStatus.Denied, message, granted.Grant);
    }

    private static bool TryParse(ResourceGrant grant, out Resource resource, out string problem)
    {
        resource = null!;
        if (!ResourceAddress.TryParse(grant.Address, out var address, out var error))
        {
            problem = $"resource '{grant.Name}' ({grant.Id}) left out: {error}";
            return false;
        }
        if (!PortSet.TryParse(grant.Tcp, out var tcp, out error) || !PortSet.TryParse(grant.Udp, out var udp, out error))
        {
            problem = $"resource '{grant.Name}' ({grant.Id}) left out: {error}";
            return false;
        }
        problem = "";
        resource = new Resource(grant, address, tcp, udp);
        return true;
    }

    private sealed class Resource(ResourceGrant grant, ResourceAddress address, PortSet tcp, PortSet udp)
    {
        public ResourceGrant Grant { get; } = grant;

        public ResourceAddress Address { get; } = address;

        public HashSet<string> Identities { get; } = new(StringComparer.Ordinal);

        public bool IsIpKind => Address.Kind is ResourceAddressKind.Ip or ResourceAddressKind.Cidr;

        public PortSet Ports(FlowProtocol protocol) => protocol == FlowProtocol.Udp ? udp : tcp;

        public string Describe() => $"'{Grant.Name}' ({Address.Canonical})";

        public bool ExplicitlyCovers(IPAddress ip)
        {
            var canonical = Address.Canonical;
            var slash = canonical.IndexOf('/', StringComparison.Ordinal);
            var network = IPAddress.Parse(slash < 0 ? canonical : canonical[..slash]);
            var prefix = slash < 0
                ? (network.AddressFamily == System.Net.Sockets.AddressFamily.InterNetwork ? 32 : 128)
                : int.Parse(canonical.AsSpan(slash + 1), CultureInfo.InvariantCulture);
            return SpecialAddresses.IsExplicitlyCovered(ip, network, prefix);
        }
    }
}
