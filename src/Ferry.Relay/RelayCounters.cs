namespace Ferry.Relay;

/// <summary>A point-in-time snapshot of a relay's traffic and refusal counters.</summary>
/// <param name="PeersConnected">Authenticated links currently up.</param>
/// <param name="LinksAccepted">Authenticated links since start.</param>
/// <param name="BytesIn">Frame bytes received on authenticated links.</param>
/// <param name="BytesOut">Frame bytes written to links.</param>
/// <param name="PacketsIn">Data frames received.</param>
/// <param name="PacketsOut">Data frames written to their destination.</param>
/// <param name="PacketsDropped">Data frames not forwarded, for any reason (also counted by reason in <paramref name="Refusals"/>).</param>
/// <param name="PacketsPerSecond">Data frames received per second over the last rate interval.</param>
/// <param name="Refusals">Refusals of handshakes, bindings and packets, and link closures, by reason; reasons never seen are absent.</param>
public sealed record RelayCounters(
    int PeersConnected,
    long LinksAccepted,
    long BytesIn,
    long BytesOut,
    long PacketsIn,
    long PacketsOut,
    long PacketsDropped,
    double PacketsPerSecond,
    IReadOnlyDictionary<RelayRefusal, long> Refusals)
{
    /// <summary>Tickets bound since start: a peer pair allowed through (a renewal of a bound pair counts again).</summary>
    public long TicketsBound { get; init; }

    /// <summary>The count for one reason (0 when never seen).</summary>
    public long RefusedFor(RelayRefusal reason) => Refusals.TryGetValue(reason, out var count) ? count : 0;
}
