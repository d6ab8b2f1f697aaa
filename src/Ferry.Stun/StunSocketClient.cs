using System.Buffers;
using System.Net;
using System.Net.Sockets;

namespace Ferry.Stun;

/// <summary>A <see cref="StunClient"/> on a UDP socket of its own, for standalone use and diagnostics.</summary>
public sealed class StunSocketClient : IAsyncDisposable
{
    private const int ReceiveBufferLength = 65536;

    private readonly Socket _socket;
    private readonly CancellationTokenSource _stopping = new();
    private readonly Task _receiveLoop;

    private StunSocketClient(Socket socket, StunClientOptions? options, TimeProvider? timeProvider)
    {
        _socket = socket;
        LocalEndPoint = (IPEndPoint)socket.LocalEndPoint!;
        Client = new StunClient(SendAsync, options, timeProvider);
        _receiveLoop = Task.Run(() => ReceiveLoopAsync(_stopping.Token));
    }

    /// <summary>The bound local endpoint.</summary>
    public IPEndPoint LocalEndPoint { get; }

    /// <summary>The client, for callers that want its full API.</summary>
    public StunClient Client { get; }

    /// <summary>
    /// Binds a socket: the given endpoint, or by default a dual-stack [::]:0 (0.0.0.0:0 where the
    /// host has no IPv6) so both IPv4 and IPv6 servers can be asked.
    /// </summary>
    public static StunSocketClient Create(IPEndPoint? localEndPoint = null, StunClientOptions? options = null, TimeProvider? timeProvider = null)
    {
        localEndPoint ??= Socket.OSSupportsIPv6 ? new IPEndPoint(IPAddress.IPv6Any, 0) : new IPEndPoint(IPAddress.Any, 0);
        var socket = new Socket(localEndPoint.AddressFamily, SocketType.Dgram, ProtocolType.Udp);
        try
        {
            if (localEndPoint.AddressFamily == AddressFamily.InterNetworkV6 && localEndPoint.Address.Equals(IPAddress.IPv6Any))
            {
                socket.DualMode = true;
            }

            socket.Bind(localEndPoint);
            return new StunSocketClient(socket, options, timeProvider);
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }

    /// <summary>Asks one server; see <see cref="StunClient.QueryAsync"/>.</summary>
    public Task<StunBindingResult> QueryAsync(IPEndPoint server, CancellationToken cancellationToken = default) =>
        Client.QueryAsync(server, cancellationToken);

    /// <summary>Asks every server at once; see <see cref="StunClient.QueryAllAsync"/>.</summary>
    public Task<IReadOnlyList<StunBindingResult>> QueryAllAsync(IEnumerable<IPEndPoint> servers, CancellationToken cancellationToken = default) =>
        Client.QueryAllAsync(servers, cancellationToken);

    /// <inheritdoc/>
    public async ValueTask DisposeAsync()
    {
        Client.Dispose();
        await _stopping.CancelAsync().ConfigureAwait(false);
        _socket.Dispose();
        await _receiveLoop.ConfigureAwait(false);
        _stopping.Dispose();
    }

    private ValueTask SendAsync(ReadOnlyMemory<byte> datagram, IPEndPoint destination, CancellationToken cancellationToken)
    {
        if (_socket.AddressFamily == AddressFamily.InterNetworkV6 && destination.AddressFamily == AddressFamily.InterNetwork)
        {
            destination = new IPEndPoint(destination.Address.MapToIPv6(), destination.Port);
        }

        return SendCoreAsync(datagram, destination, cancellationToken);
    }

    private async ValueTask SendCoreAsync(ReadOnlyMemory<byte> datagram, IPEndPoint destination, CancellationToken cancellationToken) =>
        await _socket.SendToAsync(datagram, SocketFlags.None, destination, cancellationToken).ConfigureAwait(false);

    private async Task ReceiveLoopAsync(CancellationToken cancellationToken)
    {
        byte[] buffer = ArrayPool<byte>.Shared.Rent(ReceiveBufferLength);
        EndPoint any = _socket.AddressFamily == AddressFamily.InterNetworkV6 ? new IPEndPoint(IPAddress.IPv6Any, 0) : new IPEndPoint(IPAddress.Any, 0);
        try
        {
            while (!cancellationToken.IsCancellationRequested)
            {
                SocketReceiveFromResult result;
                try
                {
                    result = await _socket.ReceiveFromAsync(buffer, SocketFlags.None, any, cancellationToken).ConfigureAwait(false);
                }
                catch (SocketException) when (cancellationToken.IsCancellationRequested)
                {
                    break;
                }
                catch (SocketException)
                {
                    // ICMP port unreachable and friends: the transaction times out on its own.
                    continue;
                }

                Client.TryHandleIncoming(buffer.AsSpan(0, result.ReceivedBytes), (IPEndPoint)result.RemoteEndPoint);
            }
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
        }
        catch (ObjectDisposedException)
        {
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }
}
