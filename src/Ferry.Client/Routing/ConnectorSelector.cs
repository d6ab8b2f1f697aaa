using System.Buffers.Binary;
using System.Security.Cryptography;
using System.Text;
using Ferry.Core.ControlPlane;
using Ferry.Core.Model;

namespace Ferry.Client.Routing;

/// <summary>Which connector a client uses for one network now, and the ones it set aside because they did not answer.</summary>
public sealed record NetworkRoute(string Network, string? Connector, string[] Online, string[] Failed);

/// <summary>
/// Chooses, per remote network, the connector a client's flows go to. Clients spread across a network's connectors by
/// weighted rendezvous hashing of the client identity (weight falls with the clients a connector already serves), so
/// different clients land on different connectors and each keeps landing on the same one; with locations set, only the
/// nearest connectors take part and the farther ones follow by distance. Once a connector has served a flow the client
/// sticks to it while the controller lists it and it answers; one that fails is set aside for a while and the next in
/// order takes over.
/// </summary>
public sealed class ConnectorSelector(string clientIdentity, GeoLocation? location, TimeProvider time)
{
    /// <summary>How long a connector that did not answer stays behind the others.</summary>
    public static readonly TimeSpan FailureHold = TimeSpan.FromSeconds(30);

    // Connectors this far (or 25 % of the distance) beyond the nearest one count as equally near and share its clients.
    private const double NearSlackKm = 100;

    private readonly Lock _gate = new();
    private Dictionary<string, ConnectorRoute[]> _online = new(StringComparer.Ordinal);
    // The ranking depends only on the list, so it is worked out once per list, not on every flow.
    private Dictionary<string, string[]> _ranked = new(StringComparer.Ordinal);
    private readonly Dictionary<string, string> _current = new(StringComparer.Ordinal);
    private readonly Dictionary<string, DateTimeOffset> _failedAt = new(StringComparer.Ordinal);

    /// <summary>Where this client is; null when it was not told.</summary>
    public GeoLocation? Location => location;

    /// <summary>Takes the controller's newest list of online connectors per network.</summary>
    public void Update(IEnumerable<NetworkConnectors> networks)
    {
        ArgumentNullException.ThrowIfNull(networks);
        var online = networks.ToDictionary(n => n.Network, n => n.Connectors ?? [], StringComparer.Ordinal);
        var ranked = online.ToDictionary(n => n.Key, n => Rank(n.Value).ToArray(), StringComparer.Ordinal);
        lock (_gate)
        {
            _online = online;
            _ranked = ranked;
        }
    }

    /// <summary>
    /// The connectors to try for <paramref name="network"/>, best first: the one in use, then the ranking, then those that
    /// failed lately (oldest failure first), then <paramref name="held"/> connections the controller does not list now (it
    /// may be restarting; a connection that still answers is better than none).
    /// </summary>
    public IReadOnlyList<string> Candidates(string network, IEnumerable<string> held)
    {
        ArgumentNullException.ThrowIfNull(held);
        lock (_gate)
        {
            var listed = _online.GetValueOrDefault(network) ?? [];
            var now = time.GetUtcNow();
            var order = new List<string>(listed.Length + 1);
            if (_current.TryGetValue(network, out var current) && listed.Any(c => c.Identity == current) && !IsHeldBack(current, now))
            {
                order.Add(current);
            }
            order.AddRange((_ranked.GetValueOrDefault(network) ?? []).Where(c => !IsHeldBack(c, now) && !order.Contains(c)));
            order.AddRange(listed.Where(c => IsHeldBack(c.Identity, now)).OrderBy(c => _failedAt[c.Identity]).Select(c => c.Identity));
            order.AddRange(held.Where(h => !order.Contains(h)));
            return order;
        }
    }

    /// <summary>Whether the controller's newest list has <paramref name="connector"/> online in <paramref name="network"/>.</summary>
    public bool IsListed(string network, string connector)
    {
        lock (_gate)
        {
            return _online.TryGetValue(network, out var listed) && listed.Any(c => c.Identity == connector);
        }
    }

    /// <summary>A flow went through <paramref name="connector"/>: the client stays with it.</summary>
    public void Succeeded(string network, string connector)
    {
        lock (_gate)
        {
            _current[network] = connector;
            _failedAt.Remove(connector);
        }
    }

    /// <summary><paramref name="connector"/> did not answer: the others go first until <see cref="FailureHold"/> has passed.</summary>
    public void Failed(string network, string connector)
    {
        lock (_gate)
        {
            _failedAt[connector] = time.GetUtcNow();
            if (_current.GetValueOrDefault(network) == connector)
            {
                _current.Remove(network);
            }
        }
    }

    /// <summary>The connector in use per network, with the online ones and those set aside, for 'ferry client status'.</summary>
    public IReadOnlyList<NetworkRoute> Routes()
    {
        lock (_gate)
        {
            var now = time.GetUtcNow();
            return [.. _online.OrderBy(n => n.Key, StringComparer.Ordinal).Select(n => new NetworkRoute(
                n.Key,
                _current.GetValueOrDefault(n.Key) is { } current && n.Value.Any(c => c.Identity == current) ? current : null,
                [.. n.Value.Select(c => c.Identity)],
                [.. n.Value.Where(c => IsHeldBack(c.Identity, now)).Select(c => c.Identity)]))];
        }
    }

    private bool IsHeldBack(string connector, DateTimeOffset now) => _failedAt.TryGetValue(connector, out var at) && now - at < FailureHold;

    /// <summary>Nearest first (when both ends have a location), and by weighted rendezvous score among equally near ones.</summary>
    private IEnumerable<string> Rank(IEnumerable<ConnectorRoute> connectors)
    {
        var scored = connectors.Select(c => (c.Identity, Distance: DistanceTo(c), Score: Score(c))).ToList();
        var nearest = scored.Where(s => s.Distance is not null).Select(s => s.Distance!.Value).DefaultIfEmpty(double.NaN).Min();
        double Tier((string, double? Distance, double) s) => s.Distance is not { } d ? double.PositiveInfinity
            : d <= nearest + Math.Max(NearSlackKm, nearest * 0.25) ? 0 : d;
        return scored.OrderBy(Tier).ThenByDescending(s => s.Score).ThenBy(s => s.Identity, StringComparer.Ordinal).Select(s => s.Identity);
    }

    private double? DistanceTo(ConnectorRoute connector)
        => location is not null && GeoLocation.ParseOrNull(connector.Location) is { } there ? location.DistanceKmTo(there) : null;

    /// <summary>
    /// Weighted rendezvous (highest random weight) score: -w / ln(u) with u uniform in (0,1) from a hash of client and connector,
    /// so each connector wins in proportion to its weight and adding or removing one moves only the clients it wins or held.
    /// </summary>
    private double Score(ConnectorRoute connector)
    {
        Span<byte> hash = stackalloc byte[32];
        SHA256.HashData(Encoding.UTF8.GetBytes(clientIdentity + "\n" + connector.Identity), hash);
        var u = ((BinaryPrimitives.ReadUInt64BigEndian(hash) >> 11) + 0.5) / (1UL << 53);
        var weight = 1.0 / (1 + Math.Max(0, connector.Clients));
        return -weight / Math.Log(u);
    }
}
