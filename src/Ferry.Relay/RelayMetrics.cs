using System.Diagnostics.Metrics;

namespace Ferry.Relay;

/// <summary>
/// The relay's instruments (meter "Ferry.Relay"): observed from <see cref="RelayServer.GetCounters"/> at scrape time, so the
/// forwarding path keeps its own interlocked counters and pays nothing more.
/// </summary>
public static class RelayMetrics
{
    public const string MeterName = "Ferry.Relay";

    private static readonly Meter Meter = new(MeterName);
    private static Func<RelayCounters?> _counters = () => null;

    static RelayMetrics()
    {
        Meter.CreateObservableGauge("ferry.relay.links.active", () => Observe(c => c.PeersConnected), description: "Authenticated relay links up now");
        Meter.CreateObservableCounter("ferry.relay.links.accepted", () => Observe(c => c.LinksAccepted), description: "Authenticated relay links since start");
        Meter.CreateObservableCounter("ferry.relay.tickets.bound", () => Observe(c => c.TicketsBound), description: "Tickets bound since start (a peer pair let through)");
        Meter.CreateObservableCounter("ferry.relay.bytes", () => Directions(c => c.BytesIn, c => c.BytesOut), description: "Frame bytes on authenticated links, by direction (in, out)");
        Meter.CreateObservableCounter("ferry.relay.packets", () => Directions(c => c.PacketsIn, c => c.PacketsOut), description: "Data frames, by direction (in, out)");
        Meter.CreateObservableCounter("ferry.relay.packets.dropped", () => Observe(c => c.PacketsDropped), description: "Data frames not forwarded, for any reason");
        Meter.CreateObservableCounter("ferry.relay.refusals", Refusals, description: "Refused handshakes, bindings and packets, and closed links, by reason");
    }

    /// <summary>Where the counters come from; set by the running daemon once its server is up.</summary>
    public static void ObserveCounters(Func<RelayCounters?> counters) => _counters = counters;

    private static IEnumerable<Measurement<long>> Observe(Func<RelayCounters, long> value)
        => _counters() is { } c ? [new Measurement<long>(value(c))] : [];

    private static IEnumerable<Measurement<long>> Directions(Func<RelayCounters, long> inbound, Func<RelayCounters, long> outbound)
        => _counters() is { } c
            ? [new Measurement<long>(inbound(c), new KeyValuePair<string, object?>("direction", "in")), new Measurement<long>(outbound(c), new KeyValuePair<string, object?>("direction", "out"))]
            : [];

    private static IEnumerable<Measurement<long>> Refusals()
        => _counters() is { } c
            ? c.Refusals.Select(r => new Measurement<long>(r.Value, new KeyValuePair<string, object?>("reason", r.Key.ToString())))
            : [];
}
