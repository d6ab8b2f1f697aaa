using System.Net;
using Ferry.Core.ControlPlane;
using Ferry.Stun;

namespace Ferry.Core.Paths;

/// <summary>Learns this host's public (server-reflexive) address by asking every relay's STUN server from the data-plane socket.</summary>
public sealed class StunDiscovery : IDisposable
{
    private readonly StunClient _client;
    private volatile StunSnapshot _last = new(null, []);
    private volatile TaskCompletionSource _done = new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>The outcome of the latest discovery: the report, and every public address the relays saw (several when the NAT maps per destination).</summary>
    public sealed record StunSnapshot(StunReportMessage? Report, IReadOnlyList<IPEndPoint> Mapped);

    /// <summary>The latest finished discovery.</summary>
    public StunSnapshot Last => _last;

    /// <summary>Waits until a discovery has finished since this endpoint started (or the last <see cref="Invalidate"/>), bounded by <paramref name="ct"/>.</summary>
    public Task WaitAsync(CancellationToken ct) => _done.Task.WaitAsync(ct);

    /// <summary>Forgets the latest outcome (the host's addresses changed): <see cref="WaitAsync"/> waits for the next discovery.</summary>
    public void Invalidate()
    {
        if (_done.Task.IsCompleted)
        {
            _done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        }
    }

    /// <summary>Sends through the owner of the data-plane socket, which hands STUN replies to <see cref="TryHandle"/>.</summary>
    public StunDiscovery(StunSendAsync send, StunClientOptions? options = null) => _client = new StunClient(send, options);

    /// <summary>Offers an incoming non-QUIC datagram; true when it answered one of our requests.</summary>
    public bool TryHandle(ReadOnlyMemory<byte> packet, IPEndPoint from) => _client.TryHandleIncoming(packet.Span, from);

    /// <summary>Queries every relay's STUN endpoints and summarises the answers as the report the controller stores.</summary>
    public async Task<StunReportMessage> RunAsync(IReadOnlyList<RelayInfo> relays, CancellationToken ct)
    {
        var (report, mapped) = await QueryAsync(relays, ct);
        _last = new StunSnapshot(report, mapped);
        _done.TrySetResult();
        return report;
    }

    private async Task<(StunReportMessage Report, IReadOnlyList<IPEndPoint> Mapped)> QueryAsync(IReadOnlyList<RelayInfo> relays, CancellationToken ct)
    {
        var targets = new List<(string Relay, IPEndPoint EndPoint)>();
        foreach (var relay in relays)
        {
            foreach (var text in relay.Stun)
            {
                if (IPEndPoint.TryParse(text, out var endpoint))
                {
                    targets.Add((relay.Name, endpoint));
                }
            }
        }
        if (targets.Count == 0)
        {
            return (new StunReportMessage("failed", null, [], relays.Count == 0 ? "no relay is online" : "no relay reported a STUN endpoint"), []);
        }
        var results = await _client.QueryAllAsync(targets.Select(t => t.EndPoint), ct);
        var answered = new List<string>();
        var mapped = new HashSet<string>();
        var mappedEndPoints = new List<IPEndPoint>();
        var failures = new List<string>();
        for (var i = 0; i < results.Count; i++)
        {
            if (results[i].IsSuccess && results[i].MappedAddress is { } address)
            {
                answered.Add(targets[i].Relay);
                if (mapped.Add(address.ToString()))
                {
                    mappedEndPoints.Add(address);
                }
            }
            else
            {
                failures.Add($"{targets[i].Relay} ({targets[i].EndPoint}): {results[i]}");
            }
        }
        if (answered.Count == 0)
        {
            return (new StunReportMessage("failed", null, [], string.Join("; ", failures)), []);
        }
        // Different answers from different servers mean the NAT maps per destination (symmetric): worth saying.
        var note = mapped.Count > 1 ? $"relays saw different addresses ({string.Join(", ", mapped)}): the NAT maps per destination" : failures.Count > 0 ? string.Join("; ", failures) : null;
        return (new StunReportMessage("ok", mapped.First(), [.. answered.Distinct()], note), mappedEndPoints);
    }

    public void Dispose() => _client.Dispose();
}
