namespace Ferry.UnitTests.Flows;

/// <summary>Gives each test a token that the test run cancels and that also fires after 60 s, so no await in a flow test can hang.</summary>
public abstract class FlowTestBase : IDisposable
{
    private readonly CancellationTokenSource _bound = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);

    protected FlowTestBase() => _bound.CancelAfter(TimeSpan.FromSeconds(60));

    protected CancellationToken Token => _bound.Token;

    public void Dispose()
    {
        _bound.Dispose();
        GC.SuppressFinalize(this);
    }
}
