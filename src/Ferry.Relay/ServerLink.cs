using System.Buffers;
using System.Collections.Concurrent;
using System.IO.Pipelines;
using System.Net.Security;

namespace Ferry.Relay;

/// <summary>The relay's side of one authenticated peer link: its read loop, its bindings and its outbound queue.</summary>
internal sealed class ServerLink
{
    // Reads come in chunks of up to this; a maximal Data frame (64 KiB + 6) then needs at most two reads.
    private const int ReadBufferSize = 64 * 1024;

    private readonly RelayServer _server;
    private readonly SslStream _stream;
    private readonly FrameOutbox _outbox;
    private readonly CancellationTokenSource _closing = new();

    // Remote identity → binding. Other links' read loops look here to find the channel a packet arrives on.
    private readonly ConcurrentDictionary<string, Binding> _byRemote = new(StringComparer.Ordinal);

    // Channel → binding; touched only by this link's own read loop.
    private readonly Dictionary<ushort, Binding> _byChannel = [];
    private ushort _lastChannel;
    private long _lastReceived;
    private int _closed;

    public ServerLink(RelayServer server, SslStream stream, string identity)
    {
        _server = server;
        _stream = stream;
        Identity = identity;
        _outbox = new FrameOutbox(server.Options.OutboundQueueCapacity);
        _lastReceived = server.Clock.GetTimestamp();
    }

    public string Identity { get; }

    public long LastReceivedTimestamp => Volatile.Read(ref _lastReceived);

    public RelayRefusal CloseReason { get; private set; }

    public string CloseMessage { get; private set; } = string.Empty;

    /// <summary>Asks the link to close, telling the peer why in an Error frame. Safe from any thread, idempotent.</summary>
    public void Close(RelayRefusal reason, string message, bool countAsRefusal)
    {
        if (Interlocked.Exchange(ref _closed, 1) != 0)
        {
            return;
        }

        CloseReason = reason;
        CloseMessage = message;
        if (countAsRefusal)
        {
            _server.CountRefusal(reason);
        }

        var buffer = OutboundFrame.RentBuffer(RelayFrameCodec.ErrorLength(message));
        var length = RelayFrameCodec.WriteError(buffer, reason, message);
        _outbox.TryEnqueueControl(OutboundFrame.Of(buffer, length, isData: false));
        _outbox.Complete();
        _closing.Cancel();
    }

    public async Task RunAsync(CancellationToken stopping)
    {
        var output = PipeWriter.Create(_stream, new StreamPipeWriterOptions(minimumBufferSize: 16 * 1024, leaveOpen: true));
        var writer = Task.Run(() => _outbox.RunWriterAsync(output, _server.CountOut, CancellationToken.None), CancellationToken.None);
        try
        {
            using var linked = CancellationTokenSource.CreateLinkedTokenSource(stopping, _closing.Token);
            await ReadLoopAsync(linked.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (stopping.IsCancellationRequested)
        {
            Close(RelayRefusal.ShuttingDown, "relay shutting down", countAsRefusal: false);
        }
        catch (Exception ex) when (ex is IOException or OperationCanceledException or ObjectDisposedException or System.Security.Authentication.AuthenticationException)
        {
            // Transport gone, or a close already requested (Close is first-wins, so a recorded reason stays).
            Close(RelayRefusal.None, $"transport closed: {ex.Message}", countAsRefusal: false);
        }
        catch (Exception ex) when (ex is not OutOfMemoryException)
        {
            // A bug here must cost one link, never the relay: log it and close only this link.
            RelayServer.LogLinkFailed(_server.Logger, _server.Identity, Identity, ex);
            Close(RelayRefusal.ProtocolError, "internal relay error", countAsRefusal: false);
        }
        finally
        {
            Close(RelayRefusal.None, "closed by peer", countAsRefusal: false);
            ReleaseBindings();
            try
            {
                // Let the closing Error frame out, but never wait on a peer that stopped reading.
                await writer.WaitAsync(TimeSpan.FromSeconds(2)).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is TimeoutException or IOException or ObjectDisposedException or OperationCanceledException or System.Security.Authentication.AuthenticationException)
            {
                // The peer is gone or stuck; disposing the stream below ends the writer.
            }

            await _stream.DisposeAsync().ConfigureAwait(false);
            if (writer.IsCompleted)
            {
                // Only once the writer is done: a PipeWriter must not be completed while a flush is still running.
                try
                {
                    await output.CompleteAsync().ConfigureAwait(false);
                }
                catch (Exception ex) when (ex is IOException or ObjectDisposedException or InvalidOperationException)
                {
                    // Nothing left to deliver to a closed transport.
                }
            }
            _ = writer.ContinueWith(static t => _ = t.Exception, CancellationToken.None, TaskContinuationOptions.OnlyOnFaulted, TaskScheduler.Default);

            // _closing is deliberately not disposed: Close() may still be running on another thread, and a token source
            // without timers holds nothing that needs releasing.
        }
    }

    private async Task ReadLoopAsync(CancellationToken cancellationToken)
    {
        var input = PipeReader.Create(_stream, new StreamPipeReaderOptions(bufferSize: ReadBufferSize, minimumReadSize: 4096, leaveOpen: true));
        try
        {
            while (true)
            {
                var result = await input.ReadAsync(cancellationToken).ConfigureAwait(false);
                var buffer = result.Buffer;
                Volatile.Write(ref _lastReceived, _server.Clock.GetTimestamp());
                while (!IsClosing)
                {
                    var status = RelayFrameCodec.TryRead(ref buffer, out var frame, out var error);
                    if (status == RelayFrameStatus.Incomplete)
                    {
                        break;
                    }

                    if (status == RelayFrameStatus.Invalid)
                    {
                        ProtocolError(error);
                        return;
                    }

                    _server.CountIn(RelayFrameCodec.HeaderLength + (int)frame.Payload.Length, frame.Type == RelayFrameType.Data);
                    if (!await HandleFrameAsync(frame, cancellationToken).ConfigureAwait(false))
                    {
                        return;
                    }
                }

                input.AdvanceTo(buffer.Start, buffer.End);
                if (result.IsCompleted || result.IsCanceled)
                {
                    if (!buffer.IsEmpty)
                    {
                        ProtocolError("link ended inside a frame");
                    }

                    return;
                }
            }
        }
        finally
        {
            await input.CompleteAsync().ConfigureAwait(false);
        }
    }

    /// <summary>Handles one frame; false ends the link.</summary>
    private async ValueTask<bool> HandleFrameAsync(RelayFrame frame, CancellationToken cancellationToken)
    {
        switch (frame.Type)
        {
            case RelayFrameType.Data:
                if (!RelayFrameCodec.TryReadData(frame.Payload, out var channel, out var packet))
                {
                    ProtocolError("malformed Data frame");
                    return false;
                }

                await ForwardAsync(channel, packet, cancellationToken).ConfigureAwait(false);
                return true;

            case RelayFrameType.Bind:
                if (!RelayFrameCodec.TryReadBind(frame.Payload, out var requestId, out var ticket))
                {
                    ProtocolError("malformed Bind frame");
                    return false;
                }

                return HandleBind(requestId, ticket);

            case RelayFrameType.Unbind:
                if (!RelayFrameCodec.TryReadUnbind(frame.Payload, out var unbound))
                {
                    ProtocolError("malformed Unbind frame");
                    return false;
                }

                if (_byChannel.Remove(unbound, out var binding))
                {
                    _byRemote.TryRemove(new KeyValuePair<string, Binding>(binding.Remote, binding));
                    AnnounceDeparture(binding.Remote);
                }

                return true;

            case RelayFrameType.Ping:
                if (!RelayFrameCodec.TryReadPing(frame.Payload, out var value))
                {
                    ProtocolError("malformed Ping frame");
                    return false;
                }

                var pong = OutboundFrame.RentBuffer(RelayFrameCodec.PingLength);
                var length = RelayFrameCodec.WritePing(pong, RelayFrameType.Pong, value);
                if (!_outbox.TryEnqueueControl(OutboundFrame.Of(pong, length, isData: false)))
                {
                    ProtocolError("peer is not reading its replies");
                    return false;
                }

                return true;

            case RelayFrameType.Pong:
                return true;

            case RelayFrameType.Error:
                RelayFrameCodec.TryReadError(frame.Payload, out var reason, out var message);
                Close(RelayRefusal.None, $"peer closed ({reason}): {message}", countAsRefusal: false);
                return false;

            default:
                ProtocolError($"{frame.Type} frames only travel from relay to peer");
                return false;
        }
    }

    private bool HandleBind(uint requestId, string ticketText)
    {
        var refusal = RelayTicket.VerifyFor(ticketText, Identity, _server.TicketKey, _server.Clock, out var ticket, out var error);
        string remote = string.Empty;
        Binding? binding = null;
        if (refusal == RelayRefusal.None)
        {
            remote = ticket!.OtherPeer(Identity)!;
            if (_byRemote.TryGetValue(remote, out var existing))
            {
                // A fresh ticket for a pair already bound extends it and keeps the channel, so packets in flight stay valid.
                existing.NotAfter = ticket.NotAfter;
                binding = existing;
            }
            else if (_byChannel.Count >= _server.Options.MaxBindingsPerLink)
            {
                refusal = RelayRefusal.TooManyBindings;
                error = $"link already holds {_byChannel.Count} bindings";
            }
            else
            {
                binding = new Binding(AllocateChannel(), remote, ticket.NotAfter);
            }
        }

        if (refusal != RelayRefusal.None || binding is null)
        {
            _server.CountRefusal(refusal);
            RelayServer.LogBindRefused(_server.Logger, _server.Identity, Identity, refusal, error);
            var refusedBuffer = OutboundFrame.RentBuffer(RelayFrameCodec.BindRefusedLength(error));
            var refusedLength = RelayFrameCodec.WriteBindRefused(refusedBuffer, requestId, refusal, error);
            if (!_outbox.TryEnqueueControl(OutboundFrame.Of(refusedBuffer, refusedLength, isData: false)))
            {
                ProtocolError("peer is not reading its replies");
                return false;
            }

            return true;
        }

        _byChannel[binding.Channel] = binding;
        _byRemote[remote] = binding;
        _server.CountBinding();
        RelayServer.LogBindOk(_server.Logger, _server.Identity, Identity, remote, binding.Channel, ticket!.Id);

        // The answer says whether the other end is here already, so a peer with several relays picks one that works.
        var back = FindReturnBinding(remote, out var destination);
        var present = back is not null;
        Volatile.Write(ref binding.Announced, present ? 1 : 0);
        var buffer = OutboundFrame.RentBuffer(RelayFrameCodec.BindOkLength(remote));
        var length = RelayFrameCodec.WriteBindOk(buffer, requestId, binding.Channel, present, binding.NotAfter, remote);
        if (!_outbox.TryEnqueueControl(OutboundFrame.Of(buffer, length, isData: false)))
        {
            ProtocolError("peer is not reading its replies");
            return false;
        }

        if (back is not null)
        {
            destination!.Announce(back, present: true);
        }

        return true;
    }

    private ushort AllocateChannel()
    {
        // Bounded: MaxBindingsPerLink < 65536 guarantees a free number within one lap.
        for (var i = 0; i < ushort.MaxValue; i++)
        {
            _lastChannel = _lastChannel == ushort.MaxValue ? (ushort)1 : (ushort)(_lastChannel + 1);
            if (!_byChannel.ContainsKey(_lastChannel))
            {
                return _lastChannel;
            }
        }

        throw new InvalidOperationException("No free channel number.");
    }

    private async ValueTask ForwardAsync(ushort channel, ReadOnlySequence<byte> packet, CancellationToken cancellationToken)
    {
        if (!_byChannel.TryGetValue(channel, out var binding))
        {
            _server.CountDropped(RelayRefusal.UnknownChannel);
            return;
        }

        var now = _server.Clock.GetUtcNow();
        if (!binding.IsValidAt(now))
        {
            _server.CountDropped(RelayRefusal.TicketExpired);
            return;
        }

        if (!_server.TryGetLink(binding.Remote, out var destination) || destination is null || destination.IsClosing)
        {
            _server.CountDropped(RelayRefusal.PeerNotConnected);
            Announce(binding, present: false);
            return;
        }

        // Both ends must have presented the ticket: the destination's binding supplies the channel it knows us by.
        if (!destination._byRemote.TryGetValue(Identity, out var back))
        {
            _server.CountDropped(RelayRefusal.PeerNotBound);
            Announce(binding, present: false);
            return;
        }

        if (Volatile.Read(ref binding.Announced) != 1)
        {
            // Presence notices can race with links coming and going; a packet that gets through settles the question.
            Announce(binding, present: true);
        }

        if (!back.IsValidAt(now))
        {
            _server.CountDropped(RelayRefusal.TicketExpired);
            return;
        }

        var size = RelayFrameCodec.DataLength((int)packet.Length);
        var buffer = OutboundFrame.RentBuffer(size);
        var length = RelayFrameCodec.WriteData(buffer, back.Channel, packet);
        var queued = await destination._outbox
            .TryEnqueuePacketAsync(OutboundFrame.Of(buffer, length, isData: true), _server.Options.QueueFullWait, cancellationToken)
            .ConfigureAwait(false);
        if (!queued)
        {
            _server.CountDropped(destination._outbox.IsCompleted ? RelayRefusal.PeerNotConnected : RelayRefusal.QueueFull);
        }
    }

    private bool IsClosing => Volatile.Read(ref _closed) != 0;

    private void ProtocolError(string message)
    {
        RelayServer.LogProtocolError(_server.Logger, _server.Identity, Identity, message);
        Close(RelayRefusal.ProtocolError, message, countAsRefusal: true);
    }

    private void ReleaseBindings()
    {
        var remotes = _byRemote.Keys.ToArray();
        _byRemote.Clear();
        foreach (var remote in remotes)
        {
            AnnounceDeparture(remote);
        }
    }

    /// <summary>The destination's binding back to this peer, when the destination is connected and has bound us.</summary>
    private Binding? FindReturnBinding(string remote, out ServerLink? destination)
    {
        if (_server.TryGetLink(remote, out destination) && destination is not null && !destination.IsClosing
            && destination._byRemote.TryGetValue(Identity, out var back))
        {
            return back;
        }

        return null;
    }

    /// <summary>Tells <paramref name="remote"/> that this peer is gone from this relay, unless a newer link of ours took over.</summary>
    private void AnnounceDeparture(string remote)
    {
        if (_server.TryGetLink(Identity, out var current) && current is not null && current != this && current._byRemote.ContainsKey(remote))
        {
            return;
        }

        if (_server.TryGetLink(remote, out var destination) && destination is not null && destination._byRemote.TryGetValue(Identity, out var back))
        {
            destination.Announce(back, present: false);
        }
    }

    /// <summary>Sends a PeerState for one of this link's bindings when it differs from what the peer was last told.</summary>
    private void Announce(Binding binding, bool present)
    {
        var state = present ? 1 : 0;
        if (Interlocked.Exchange(ref binding.Announced, state) == state || IsClosing)
        {
            return;
        }

        // Best effort: a peer too far behind on control frames misses a notice, and its next packet corrects it.
        var buffer = OutboundFrame.RentBuffer(RelayFrameCodec.PeerStateLength);
        var length = RelayFrameCodec.WritePeerState(buffer, binding.Channel, present);
        _outbox.TryEnqueueControl(OutboundFrame.Of(buffer, length, isData: false));
    }

    /// <summary>One bound pair as seen from this link: the channel number and who is at the other end, until when.</summary>
    private sealed class Binding(ushort channel, string remote, DateTimeOffset notAfter)
    {
        private long _notAfter = notAfter.ToUnixTimeSeconds();

        // What the peer was last told about the remote's presence: -1 nothing yet, 0 absent, 1 present.
        public int Announced = -1;

        public ushort Channel { get; } = channel;

        public string Remote { get; } = remote;

        public DateTimeOffset NotAfter
        {
            get => DateTimeOffset.FromUnixTimeSeconds(Volatile.Read(ref _notAfter));
            set => Volatile.Write(ref _notAfter, value.ToUnixTimeSeconds());
        }

        // As RelayTicket.IsValidAt: a ticket may expire at DateTimeOffset.MaxValue, so the tolerance comes off now.
        public bool IsValidAt(DateTimeOffset now) => now - RelayTicket.ClockTolerance <= NotAfter;
    }
}
