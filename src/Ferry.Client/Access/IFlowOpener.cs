using Ferry.Core.ControlPlane;
using Ferry.Core.Flows;

namespace Ferry.Client.Access;

/// <summary>Opens a flow to a connector of a resource's network: sends the header, waits for the connector's reply.</summary>
/// <remarks>The real opener opens a QUIC stream on the connection to a connector of <c>resource.Network</c>.</remarks>
public interface IFlowOpener
{
    /// <summary>
    /// Opens the flow; a connector's refusal comes back as a non-Ok <see cref="OpenedFlow.Reply"/>, not as an exception.
    /// Failing to reach any connector is also a reply (Unreachable or Timeout) with the reason. When <paramref name="cancellationToken"/>
    /// fires first, the opener throws <see cref="OperationCanceledException"/> and disposes whatever stream it had opened.
    /// </summary>
    Task<OpenedFlow> OpenAsync(ResourceGrant resource, FlowHeader header, CancellationToken cancellationToken);
}

/// <summary>An answered flow: the connector's reply and, when it is Ok, the stream to copy bytes over and how to half-close it.</summary>
public sealed class OpenedFlow : IAsyncDisposable
{
    public OpenedFlow(FlowReply reply, Stream? stream = null, Func<Stream, ValueTask>? completeWrites = null)
    {
        ArgumentNullException.ThrowIfNull(reply);
        if (reply.IsOk && (stream is null || completeWrites is null))
        {
            throw new ArgumentException("an Ok flow needs its stream and completeWrites callback", nameof(stream));
        }
        Reply = reply;
        Stream = reply.IsOk ? stream : null;
        CompleteWrites = reply.IsOk ? completeWrites : null;
        if (!reply.IsOk && stream is not null)
        {
            // A refused flow carries no bytes; release its stream now so callers only ever dispose Ok flows' streams.
            stream.Dispose();
        }
    }

    public FlowReply Reply { get; }

    /// <summary>The flow's bytes, when <see cref="Reply"/> is Ok.</summary>
    public Stream? Stream { get; }

    /// <summary>Ends the sending side of <see cref="Stream"/> (QUIC: CompleteWrites; TCP: Shutdown(Send)), when <see cref="Reply"/> is Ok.</summary>
    public Func<Stream, ValueTask>? CompleteWrites { get; }

    public static OpenedFlow Refused(FlowStatus status, string message) => new(new FlowReply(status, message));

    public ValueTask DisposeAsync() => Stream?.DisposeAsync() ?? ValueTask.CompletedTask;
}
