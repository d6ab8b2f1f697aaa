using System.Diagnostics.Metrics;
using Ferry.Core.ControlPlane;

namespace Ferry.Client;

/// <summary>The client's instruments (meter "Ferry.Client"), exported by --metrics-listen; names and labels are listed in docs/operations.md.</summary>
public static class ClientMetrics
{
    public const string MeterName = "Ferry.Client";

    private static readonly Meter Meter = new(MeterName);
    private static readonly Counter<long> Flows = Meter.CreateCounter<long>("ferry.client.flows", description: "Flows asked of connectors, by protocol (tcp, udp) and outcome (opened, failed)");
    private static readonly Counter<long> Bytes = Meter.CreateCounter<long>("ferry.client.bytes", description: "Bytes of ended TCP flows and of UDP payloads, by direction (sent, received)");
    private static readonly Counter<long> Handshakes = Meter.CreateCounter<long>("ferry.client.quic.handshakes", description: "QUIC handshakes with connectors, by outcome (ok, failed)");
    private static readonly Histogram<double> HandshakeDuration = Meter.CreateHistogram<double>("ferry.client.quic.handshake.duration", unit: "s", description: "Time from ticket to an established QUIC connection with a connector");
    private static readonly Counter<long> Failovers = Meter.CreateCounter<long>("ferry.client.failovers", description: "Flows that ended up on a connector other than the first one tried");
    private static Func<IReadOnlyList<PathStatus>> _paths = () => [];

    static ClientMetrics()
    {
        Meter.CreateObservableGauge("ferry.client.connections", ConnectionsByPath, description: "Connections to connectors now, by path kind (direct, relayed)");
    }

    /// <summary>Where the open connections' paths come from; set by the running daemon.</summary>
    internal static void ObservePaths(Func<IReadOnlyList<PathStatus>> paths) => _paths = paths;

    internal static void Flow(string protocol, bool opened) => Flows.Add(1, new("protocol", protocol), new("outcome", opened ? "opened" : "failed"));

    internal static void BytesMoved(long sent, long received)
    {
        if (sent > 0)
        {
            Bytes.Add(sent, new KeyValuePair<string, object?>("direction", "sent"));
        }
        if (received > 0)
        {
            Bytes.Add(received, new KeyValuePair<string, object?>("direction", "received"));
        }
    }

    internal static void Handshake(bool ok, TimeSpan duration)
    {
        var outcome = new KeyValuePair<string, object?>("outcome", ok ? "ok" : "failed");
        Handshakes.Add(1, outcome);
        HandshakeDuration.Record(duration.TotalSeconds, outcome);
    }

    internal static void Failover() => Failovers.Add(1);

    private static IEnumerable<Measurement<int>> ConnectionsByPath()
    {
        var paths = _paths();
        var direct = paths.Count(p => p.Kind == "direct");
        // Both kinds are always reported, so a dashboard sees 0 rather than a missing series.
        return [new(direct, new KeyValuePair<string, object?>("path", "direct")), new(paths.Count - direct, new KeyValuePair<string, object?>("path", "relayed"))];
    }
}
