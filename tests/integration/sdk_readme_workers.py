"""Workers as the Conductor Python SDK's README writes them, with only the imports changed
(docs/migrating-from-conductor-python.md). Module level, so worker processes can import them."""

# before: from conductor.client.http.models import Task, TaskResult
#         from conductor.client.http.models.task_result_status import TaskResultStatus
#         from conductor.client.worker.worker_interface import WorkerInterface
#         from conductor.client.worker.worker_task import worker_task
from taskfleet import Task, TaskResult, WorkerInterface, worker_task
from taskfleet import TaskStatus as TaskResultStatus


class SimplePythonWorker(WorkerInterface):
    def execute(self, task: Task) -> TaskResult:
        task_result = self.get_task_result_from_task(task)
        task_result.add_output_data("worker_style", "class")
        task_result.add_output_data("secret_number", 1234)
        task_result.add_output_data("is_it_true", False)
        task_result.status = TaskResultStatus.COMPLETED
        return task_result

    def get_polling_interval_in_seconds(self) -> float:
        # poll every 500ms
        return 0.5


@worker_task(task_definition_name="python_annotated_task", thread_count=2)
def execute(name: str, greeting=None) -> object:
    return {"message": f"{greeting or 'Hello'} {name}"}
